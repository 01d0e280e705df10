"""dreamgym_core makes torch's OpenMP threads wait passively unless the user chose otherwise.

Checked on the OpenMP runtime itself: libgomp prints its settings when it loads under
``OMP_DISPLAY_ENV=VERBOSE``, and a passive wait policy shows as a spin count of 0.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def spin_count(imports: str, **env: str) -> str:
    """GOMP_SPINCOUNT as libgomp reports it when a fresh interpreter runs ``imports``."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(
        [sys.executable, "-c", imports], env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env},
        capture_output=True, text=True, check=True,
    )
    lines = [line for line in out.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    if not lines:
        pytest.skip("torch's OpenMP runtime here is not libgomp (it prints no GOMP_SPINCOUNT)")
    return lines[0].split("=", 1)[1].strip().strip("'")


def test_importing_dreamgym_core_before_torch_makes_openmp_wait_passively() -> None:
    assert spin_count("import dreamgym_core, torch") == "0"


def test_without_dreamgym_core_openmp_spins() -> None:
    # The control: the spin count above is what the import changed, not libgomp's default.
    assert spin_count("import torch") != "0"


def test_a_wait_policy_the_user_set_wins() -> None:
    assert spin_count("import dreamgym_core, torch", OMP_WAIT_POLICY="active") != "0"
