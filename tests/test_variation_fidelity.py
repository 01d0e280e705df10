"""benchmarks/table1/variation_fidelity.py: the experience model on the curriculum's variation worlds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

VARIATION_FIDELITY_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "table1" / "variation_fidelity.py"


def _module():
    spec = importlib.util.spec_from_file_location("table1_variation_fidelity", VARIATION_FIDELITY_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarise_counts_agreement_and_optimistic_episodes():
    pairs = [[True, True], [False, True], [True, False], [False, False]]  # (real, synthetic)
    assert _module().summarise(pairs) == {"episodes": 4, "real": 50.0, "synthetic": 50.0, "agreement": 50.0, "optimistic": 25.0}


def test_the_test_replay_must_reproduce_the_cached_cell(tmp_path):
    module = _module()
    pairs = [(True, True), (True, False), (False, False), (False, False)]
    cell = {"warmstart_success": 0.5, "warmstart_synthetic_success": 0.25, "warmstart_synthetic_agreement": 0.75}
    module.check_test(pairs, cell, tmp_path)  # the same numbers: passes
    with pytest.raises(SystemExit, match="the cell"):
        module.check_test(pairs, {**cell, "warmstart_synthetic_success": 0.5}, tmp_path)
