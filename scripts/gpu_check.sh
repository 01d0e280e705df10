#!/usr/bin/env bash
# GPU check: the GPU-marked tests, then the main job with the policy and the experience model on CUDA.
#
# Usage: scripts/gpu_check.sh [OUT_DIR]      (default OUT_DIR: runs/gpu-check)
# Env:   PY=.venv/bin/python                 interpreter with dreamgym and its plugins (a CUDA torch)
# Writes: OUT_DIR/gpu_tests.log, OUT_DIR/main/{summary.json,stderr.log,report.md,metrics.jsonl},
#         OUT_DIR/gpu_usage.csv (nvidia-smi every second while the main job runs)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu-check}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT/main"
OUT=$(cd "$OUT" && pwd)
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA GPU visible')" || exit 2

# 1. Every GPU-marked test (verl's smoke skips without vllm or sglang).
"$PY" -m pytest -m gpu -q -rA tests plugins > "$OUT/gpu_tests.log" 2>&1
tests=$?
tail -n 20 "$OUT/gpu_tests.log"

# 2. The main job on CUDA: wall time and peak resident memory of the run, GPU memory from nvidia-smi.
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 1 > "$OUT/gpu_usage.csv" 2>&1 &
SMI=$!
"$PY" - "$PY" "$OUT" <<'PY'
import resource, subprocess, sys, time
py, out = sys.argv[1], sys.argv[2]
start = time.time()
with open(f"{out}/main/summary.json", "w") as summary, open(f"{out}/main/stderr.log", "w") as log:
    rc = subprocess.call([py, "-m", "dreamgym_core.cli", "run", "examples/default.yaml", "--set", f"run_dir={out}/main/run",
                          "--set", "policy.config.device=cuda", "--set", "experience_model.config.device=cuda"],
                         stdout=summary, stderr=log)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"main job: rc={rc} wall {time.time() - start:.1f} s, peak resident memory {peak:.0f} MB")
sys.exit(rc)
PY
main=$?
kill "$SMI" 2>/dev/null
cp "$OUT/main/run/report.md" "$OUT/main/run/metrics.jsonl" "$OUT/main/" 2>/dev/null
echo "peak GPU memory: $(cut -d, -f2 "$OUT/gpu_usage.csv" | grep -o '[0-9]*' | sort -n | tail -1) MiB"
exit $(( tests || main ))
