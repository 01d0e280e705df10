#!/usr/bin/env bash
# Set up (if needed) and run the default test suite: everything but slow and GPU tests.
# The slowest tests are listed at the end, to keep the suite within its ~15-minute budget on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -m "not slow and not gpu" --durations=20 "$@"
