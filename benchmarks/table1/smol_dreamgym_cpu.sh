#!/usr/bin/env bash
# GRPO in DreamGym with SmolLM2-135M-Instruct as both the policy and the experience model, on
# TextWorldExpress mapreader with 4 locations (distance 2), on a CPU: the arm a GPU would run
# with pretrained_policy.sh's "smol" arm, at a budget two cores can carry. Three run directories:
#   OUT/P   offline data (128 episodes) and the policy's SFT (1 epoch at lr 1e-4); its "after RL"
#           line is the SFT's held-out success (loop.iterations 0)
#   OUT/S   the SmolLM2 experience model, trained on 32 episodes (16 expert, 8 noisy, 8 random;
#           one epoch: a CPU epoch on all 128 would take hours), same-world demos, grounded moves
#   OUT/DG  P's data and warm start and S's experience model copied in; 6 GRPO iterations (lr 1e-5)
#           in DreamGym, then the held-out evaluation: the paired comparison with P
# P and S run side by side (1 thread each), then DG (2 threads per model). Run it again after an
# interruption: finished stages are kept and DG resumes from its last checkpoint.
# Usage: benchmarks/table1/smol_dreamgym_cpu.sh OUT_DIR [SEED]   (seed 0 was measured)
# Writes: OUT_DIR/{P,S,DG}/ and their .json (summary) and .log (progress, /usr/bin/time -v)
set -uo pipefail
cd "$(dirname "$0")/../.."
E=${1:?usage: smol_dreamgym_cpu.sh OUT_DIR [SEED]}; SEED=${2:-0}
mkdir -p "$E"; E=$(cd "$E" && pwd); W=$E/smollm2; PY=${PY:-.venv/bin/python}
[ -f "$W/done.ok" ] || { "$PY" -c "import sys; from dreamgym_plugin_hf import SmolLM2Config, build_smollm2; build_smollm2(SmolLM2Config(cache_dir=sys.argv[1]))" "$W" && touch "$W/done.ok"; }
COMMON=(--set loop.warmstart_epochs=1 --set loop.warmstart_lr=1.0e-4
  --set "algo.config={lr: 1.0e-5, max_new_tokens: 24, minibatch_size: 16, micro_batch_size: 4}"
  --set eval.synthetic_agreement=false --set eval.before_training=false --set env.config.valid_seeds=0
  --set loop.warmstart_select_episodes=0 --set env.config.game=mapreader
  --set "env.config.params={numLocations: 4, maxDistanceApart: 2}" --set env.config.max_steps=14 --set loop.max_steps=12
  --set seed="$SEED" --set loop.demos=same-world-first --set env.config.grounded_moves=true --set eval.fidelity_episodes=0)
smol() { echo "{name: smollm2, config: {cache_dir: $W, chat_template: true, cpu_threads: $1, max_length: 1024, sft_micro_batch: 2}}"; }
EXPCFG="{epochs: 1, lr: 1.0e-4, batch_size: 8, annotator: rule, max_new_tokens: 320}"
run() { /usr/bin/time -v "$PY" -m dreamgym_core.cli run benchmarks/table1/base.yaml "${COMMON[@]}" "$@"; }
if [ ! -f "$E/P/summary.json" ]; then
  run --set "policy=$(smol 1)" --set experience.skip=true --set loop.iterations=0 --set run_dir="$E/P" > "$E/P.json" 2> "$E/P.log" &
fi
if [ ! -f "$E/S/experience_model/done" ]; then
  run --set "experience_model=$(smol 1)" --set "experience=$EXPCFG" --set data.expert_episodes=16 --set data.noisy_episodes=8 \
    --set data.random_episodes=8 --set loop.iterations=0 --set eval.episodes=1 --set run_dir="$E/S" > "$E/S.json" 2> "$E/S.log" &
fi
wait
[ -f "$E/P/policy_init/done" ] && [ -f "$E/S/experience_model/done" ] || { echo "smol_dreamgym_cpu.sh: P or S did not finish (see $E/P.log, $E/S.log)" >&2; exit 1; }
RESUME=()
if [ -d "$E/DG/checkpoints" ]; then RESUME=(--resume); else
  mkdir -p "$E/DG" && cp "$E/P/offline.jsonl" "$E/DG/" && cp -r "$E/P/policy_init" "$E/S/experience_model" "$E/DG/"; fi
run --set "policy=$(smol 2)" --set "experience_model=$(smol 2)" --set "experience=$EXPCFG" --set loop.iterations=6 \
  --set run_dir="$E/DG" "${RESUME[@]}" >> "$E/DG.json" 2>> "$E/DG.log"
