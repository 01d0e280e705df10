#!/usr/bin/env bash
# Branch transitions as experience-model data (experience.branches) against Table 1's GRPO
# DreamGym row, on Table 1's coin pipeline (benchmarks/table1/base.yaml, eval.fidelity_episodes=6
# as its cells). Per seed:
#
#   plain:    the GRPO DreamGym cell's pipeline, run from scratch
#   branches: the same with data.branch_actions=4 and experience.branches=true, started from the
#             plain arm's offline data and warm-started policy (copied once the plain arm has
#             saved them), so that only the experience model's data and the buffer differ
#
# Seeds run in two lanes, one core each. Usage: bash benchmarks/branch_data/run.sh [SEED ...]
# (default 0 1 2 3 4 5). A finished run is kept; summarize.py writes the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(0 1 2 3 4 5)
OUT=benchmarks/branch_data/runs
run() {  # run DIR SEED [--set ...]: the JSON summary goes to DIR/summary.json
  local dir=$1 seed=$2
  [ -s "$dir/summary.json" ] && return 0
  local resume=()
  [ -d "$dir/checkpoints" ] && resume=(--resume)
  .venv/bin/dreamgym run benchmarks/table1/base.yaml --set seed="$seed" --set run_dir="$dir" \
    --set eval.fidelity_episodes=6 "${@:3}" "${resume[@]}" > "$dir.summary.tmp" 2> "$dir.log"
  mv "$dir.summary.tmp" "$dir/summary.json"
}
pair() {  # pair SEED
  local plain=$OUT/plain/seed$1 branches=$OUT/branches/seed$1
  mkdir -p "$OUT/plain" "$OUT/branches"
  run "$plain" "$1"
  if [ ! -d "$branches" ]; then
    mkdir -p "$branches"
    cp "$plain/offline.jsonl" "$branches/"
    cp -r "$plain/policy_init" "$branches/"
  fi
  run "$branches" "$1" --set data.branch_actions=4 --set experience.branches=true
}
lane() { for seed in "$@"; do pair "$seed"; done; }
lane0=() lane1=()
for i in "${!SEEDS[@]}"; do
  if (( i % 2 )); then lane1+=("${SEEDS[$i]}"); else lane0+=("${SEEDS[$i]}"); fi
done
lane "${lane0[@]}" &
[ ${#lane1[@]} -gt 0 ] && lane "${lane1[@]}" &
wait
.venv/bin/python benchmarks/branch_data/summarize.py
