#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded default pipeline (CPU, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A new run directory each time (runs/default-<time>), so the command can be repeated.
exec .venv/bin/dreamgym run examples/default.yaml --set "run_dir=runs/default-$(date +%Y%m%d-%H%M%S)" "$@"
