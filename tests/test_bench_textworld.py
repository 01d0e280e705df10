"""benchmarks/envs/bench_textworld.py: both sides of the paired benchmark still reach the engine.

The raw side drives the engine object the plugin started, through the plugin's internals; a
refactor of those internals must not leave the benchmark unable to start."""

from __future__ import annotations

import pytest

from scripts import load_script

pytest.importorskip("textworld_express")
pytest.importorskip("dreamgym_plugin_textworld")


def _module():
    return load_script("envs/bench_textworld.py", "bench_textworld")


def test_twx_benchmark_runs_on_the_engine_the_plugin_started():
    result = _module().bench_twx("coin", {}, steps=3, chunks=3)
    assert result["steps_per_side"] > 0
    assert result["raw_steps_per_s"] > 0 and result["plugin_steps_per_s"] > 0
    assert result["plugin_python_us_per_step"] >= 0
