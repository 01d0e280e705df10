#!/usr/bin/env bash
# Branch transitions as experience-model data (experience.branches) against Table 1's GRPO
# DreamGym row, on Table 1's pipeline for GAME (benchmarks/table1/base.yaml with the game's
# overrides from benchmarks/table1/run.py's GAMES, eval.fidelity_episodes=6 as its cells). Per seed:
#
#   plain:    the GRPO DreamGym cell's pipeline, run from scratch
#   branches: the same with data.branch_actions=4 and experience.branches=true, started from the
#             plain arm's offline data and warm-started policy (copied once the plain arm has
#             saved them), so that only the experience model's data and the buffer differ
#
# Seeds run in two lanes, one core each. Usage: [GAME=mapreader] bash benchmarks/branch_data/run.sh
# [SEED ...] (GAME defaults to coin, seeds to 0 1 2 3 4 5). Runs go to runs/GAME/; a finished run is
# kept; summarize.py GAME writes the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
GAME=${GAME:-coin}
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(0 1 2 3 4 5)
OUT=benchmarks/branch_data/runs/$GAME
GAME_SETS=()
while IFS= read -r override; do [ -n "$override" ] && GAME_SETS+=(--set "$override"); done < <(
  .venv/bin/python -c "import sys; sys.path.insert(0, 'benchmarks/table1'); import run; print('\n'.join(run.GAMES.get(sys.argv[1], [])))" "$GAME")
[ ${#GAME_SETS[@]} -gt 0 ] || { echo "run.sh: GAME=$GAME is not a game of benchmarks/table1/run.py's GAMES" >&2; exit 2; }
run() {  # run DIR SEED [--set ...]: the JSON summary goes to DIR/summary.json
  local dir=$1 seed=$2
  [ -s "$dir/summary.json" ] && return 0
  local resume=()
  [ -d "$dir/checkpoints" ] && resume=(--resume)
  .venv/bin/dreamgym run benchmarks/table1/base.yaml --set seed="$seed" --set run_dir="$dir" \
    --set eval.fidelity_episodes=6 "${GAME_SETS[@]}" "${@:3}" "${resume[@]}" > "$dir.summary.tmp" 2> "$dir.log"
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
.venv/bin/python benchmarks/branch_data/summarize.py "$GAME"
