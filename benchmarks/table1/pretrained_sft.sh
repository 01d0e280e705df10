#!/usr/bin/env bash
# SmolLM2-135M-Instruct's SFT warm start alone, on the CPU: does a game leave a pretrained
# policy room for RL above its SFT? The table's base.yaml with SmolLM2 as the policy, one
# warm-start epoch (lr 1e-4, no validation pick), no RL; the "after RL" line of the run's log
# and report is then the SFT's success on the 32 held-out test games.
#
# Usage: benchmarks/table1/pretrained_sft.sh RUN_DIR SEED [--set KEY=VALUE ...]   (the game's overrides)
# Env:   PY=.venv/bin/python   THREADS=2 (torch threads)   WEIGHTS=runs/smollm2-weights (the
#        dequantised GGUF, written once and shared by runs)
# Costs on 2 cores: 14-25 minutes a run, most of it the SFT (results/pretrained-policy).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN_DIR=${1:?usage: pretrained_sft.sh RUN_DIR SEED [--set KEY=VALUE ...]}; SEED=${2:?seed}; shift 2
THREADS=${THREADS:-2}
exec "${PY:-.venv/bin/python}" -m dreamgym_core.cli run benchmarks/table1/base.yaml \
  --set "policy={name: smollm2, config: {cache_dir: ${WEIGHTS:-runs/smollm2-weights}, chat_template: true, cpu_threads: $THREADS, max_length: 1024, sft_micro_batch: 4}}" \
  --set loop.warmstart_epochs=1 --set loop.warmstart_lr=1.0e-4 \
  --set loop.iterations=0 --set loop.mode=real --set experience.skip=true \
  --set eval.synthetic_agreement=false --set eval.before_training=false \
  --set env.config.valid_seeds=0 --set loop.warmstart_select_episodes=0 \
  --set seed="$SEED" --set run_dir="$RUN_DIR" "$@"
