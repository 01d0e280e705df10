"""benchmarks/envs/bench_textworld.py: both sides of the paired benchmark still reach the engine.

The raw side drives the engine object the plugin started, through the plugin's internals; a
refactor of those internals must not leave the benchmark unable to start."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("textworld_express")
pytest.importorskip("dreamgym_plugin_textworld")

BENCH_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "envs" / "bench_textworld.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_textworld", BENCH_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_twx_benchmark_runs_on_the_engine_the_plugin_started():
    result = _module().bench_twx("coin", {}, steps=3, chunks=3)
    assert result["steps_per_side"] > 0
    assert result["raw_steps_per_s"] > 0 and result["plugin_steps_per_s"] > 0
    assert result["plugin_python_us_per_step"] >= 0
