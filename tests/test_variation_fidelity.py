"""benchmarks/table1/variation_fidelity.py: the experience model on the curriculum's variation worlds."""

from __future__ import annotations

import pytest

from scripts import load_script


def _module():
    return load_script("table1/variation_fidelity.py", "table1_variation_fidelity")


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
