"""A reduced version of the README's main job, on the real engine and real models:
collect -> buffer -> annotate -> joint SFT -> warm start -> GRPO in DreamGym -> evaluate.
Minutes, not the full budget: it proves the pipeline, not the learning (benchmarks do)."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, run_cli

pytest.importorskip("dreamgym_plugin_textworld")
pytest.importorskip("dreamgym_plugin_hf")
pytest.importorskip("dreamgym_plugin_local")

REDUCED = [
    "env.config.train_seeds=6", "env.config.test_seeds=4",
    "data.expert_episodes=6", "data.noisy_episodes=2", "data.random_episodes=2",
    "experience.epochs=1", "loop.warmstart_epochs=1", "loop.iterations=2",
    "loop.tasks_per_iteration=2", "loop.group_size=2", "loop.max_steps=3", "eval.episodes=4",
]


def test_reduced_main_job_then_resume_and_eval(tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", str(ROOT / "examples" / "default.yaml"), "--set", f"run_dir={run_dir}"]
    for item in REDUCED:
        args += ["--set", item]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["eval/episodes"] == 4.0
    assert summary["counters/real_transitions"] == 0.0  # DreamGym mode: no real RL transitions
    assert summary["counters/synthetic_transitions"] > 0
    assert summary["counters/offline_transitions"] > 0
    assert "training the experience model" in result.stderr  # progress is visible
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "eval_untrained/success_rate" in rows[0] and "experience/sft_loss" in rows[0]
    assert any("experience/parse_failure_rate" in r for r in rows[1:])
    report = (run_dir / "report.md").read_text()
    assert "| untrained |" in report and "| after RL |" in report
    assert list((run_dir / "tensorboard").iterdir())
    # --resume of a finished run only re-evaluates; eval reads the last checkpoint
    evaluated = run_cli("eval", *args[1:], "--episodes", "2")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["checkpoint_iteration"] == 2
