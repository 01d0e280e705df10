#!/usr/bin/env bash
# Early Experience (METHOD.md section 5) against the plain warm start, on the main job's coin
# pipeline cut to its warm start (loop.iterations=0: the SFT baseline). Both arms of a seed share
# its offline data and run side by side, one core each, so that the machine's load falls on both.
#
#   world-model: imitation | data.branch_actions=4 + loop.world_model_epochs=1, then the same imitation
#   reflection:  imitation | data.branch_actions=4 + loop.self_reflection=rule (demos think about their
#                branches); both arms with algo.config.max_new_tokens=192 so that a reflection fits
#
# Usage: bash benchmarks/early_experience/run.sh EXPERIMENT [SEED ...]   (default seeds: 0 1 2 3 4 5)
# Writes runs/... (a finished run is kept) and EXPERIMENT's table (summarize.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
EXPERIMENT=$1
shift
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(0 1 2 3 4 5)
OUT=benchmarks/early_experience/runs
# The coin game the results were measured on (examples/default.yaml's until it moved to three rooms).
COMMON=(--set loop.mode=real --set experience.skip=true --set loop.iterations=0 --set eval.synthetic_agreement=false
        --set policy.config.cpu_threads=1 --set experience_model.config.cpu_threads=1
        --set "env.config.params={numLocations: 2, includeDoors: 0}" --set env.config.distinct_worlds=false)
arm() {  # arm DIR SEED [--set ...]
  local dir="$OUT/$1/seed$2"
  [ -f "$dir/report.md" ] && return 0
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  .venv/bin/dreamgym run examples/default.yaml "${COMMON[@]}" --set seed="$2" --set run_dir="$dir" "${@:3}" \
    > "$dir.log" 2>&1
}
for seed in "${SEEDS[@]}"; do
  case "$EXPERIMENT" in
    world-model)
      arm imitation "$seed" &
      arm world-model "$seed" --set data.branch_actions=4 --set loop.world_model_epochs=1 & ;;
    reflection)
      arm reflection/imitation "$seed" --set algo.config.max_new_tokens=192 &
      arm reflection/self-reflection "$seed" --set algo.config.max_new_tokens=192 \
        --set data.branch_actions=4 --set loop.self_reflection=rule & ;;
    *) echo "unknown experiment $EXPERIMENT (world-model or reflection)" >&2; exit 2 ;;
  esac
  wait
done
.venv/bin/python benchmarks/early_experience/summarize.py "$EXPERIMENT"
