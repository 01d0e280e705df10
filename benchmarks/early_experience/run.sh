#!/usr/bin/env bash
# Early Experience's implicit world modelling (METHOD.md section 5) against the plain warm start,
# on the main job's coin pipeline cut to its warm start (loop.iterations=0: the SFT baseline).
# Both arms of a seed share its offline data and run side by side, one core each, so that the
# machine's load falls on both alike. The world-model arm adds data.branch_actions=4 (real branch
# transitions at the demos' states) and one epoch of world modelling before the same imitation.
#
# Usage: bash benchmarks/early_experience/run.sh [SEED ...]     (default: 0 1 2 3 4 5)
# Writes runs/<arm>/seed<S>/ (a finished run is kept) and results.md's table (summarize.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=benchmarks/early_experience/runs
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(0 1 2 3 4 5)
COMMON=(--set loop.mode=real --set experience.skip=true --set loop.iterations=0 --set eval.synthetic_agreement=false
        --set policy.config.cpu_threads=1 --set experience_model.config.cpu_threads=1)
arm() {  # arm NAME SEED [--set ...]
  local dir="$OUT/$1/seed$2"
  [ -f "$dir/report.md" ] && return 0
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  .venv/bin/dreamgym run examples/default.yaml "${COMMON[@]}" --set seed="$2" --set run_dir="$dir" "${@:3}" \
    > "$dir.log" 2>&1
}
for seed in "${SEEDS[@]}"; do
  arm imitation "$seed" &
  arm world-model "$seed" --set data.branch_actions=4 --set loop.world_model_epochs=1 &
  wait
done
.venv/bin/python benchmarks/early_experience/summarize.py
