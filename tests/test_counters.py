"""What a run's counters say it used: real and synthetic steps played, validation steps that picked a
policy (dreamgym_core.loop), and the TensorBoard rows a resumed run keeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dreamgym_core import ComponentSpec, checkpoint, hookimpl
from dreamgym_core.config import PipelineConfig, resolve
from dreamgym_core.loop import run_pipeline

from stand_ins import SavingScriptedPolicy, ScriptConfig, ScriptedPolicy, StandIns, pipeline_dict


def _resolved(plugins, run_dir: Path, parts: dict | None = None, **loop):
    pipeline = msgspec.convert(pipeline_dict(str(run_dir), **loop) | (parts or {}), type=PipelineConfig)
    return resolve(pipeline, plugins, where="inline.yaml")


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class Mumbler(ScriptedPolicy):
    """Writes no action at all on about half of its turns, as a small policy sometimes does."""

    def generate(self, **kw: Any) -> list[str]:
        return [text if self.rng.random() < 0.5 else "I am not sure" for text in super().generate(**kw)]


class Selecting(SavingScriptedPolicy):
    """Reports its SFT epochs, so that the warm start's epoch is picked on validation play."""

    def sft(self, *, examples, epochs, on_epoch=None, **_: Any) -> dict[str, float]:
        for epoch in range(1, epochs + 1):
            on_epoch(epoch, 1.0)
        return {"losses/sft_loss": 1.0}


class Policies:
    @hookimpl
    def dreamgym_register_models(self):
        return [ComponentSpec(name="mumbler", factory=Mumbler, config_type=ScriptConfig, description="Half unparsable."),
                ComponentSpec(name="selecting", factory=Selecting, config_type=ScriptConfig, description="Epochs.")]


@pytest.mark.parametrize(("mode", "counter"), [("real", "real"), ("dreamgym", "synthetic")])
def test_steps_no_environment_played_are_not_counted_as_transitions(register_plugin, tmp_path, mode, counter):
    # An episode whose policy output holds no action ends on a note no environment saw; it was
    # counted as a real transition and charged to S2R's real budget.
    register_plugin(Policies(), "policies")
    plugins = register_plugin(StandIns(), "stand-ins")
    parts = {"policy": {"name": "mumbler"}, "eval": {"episodes": 0}}
    if mode == "dreamgym":
        register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
        register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
        parts |= {"experience_model": {"name": "dice-lm"}, "encoder": {"name": "hashing"}, "buffer": {"name": "exact"}}
    summary = run_pipeline(_resolved(plugins, tmp_path / "run", parts, mode=mode, iterations=3), plugins, progress=False)
    rows = [r for r in _rows(tmp_path / "run") if "rollout/steps" in r]
    unparsed = sum(r["errors/rollout_unparsed_actions"] for r in rows)
    played = sum(r["rollout/steps"] for r in rows) - unparsed
    assert unparsed > 0 and summary[f"counters/{counter}_transitions"] == played


def test_a_reused_warm_start_keeps_the_validation_steps_that_picked_its_epoch(register_plugin, tmp_path):
    # A run resumed after its warm start was saved (or started from a copied-in policy_init)
    # reported no validation steps, though its policy was picked with them.
    register_plugin(Policies(), "policies")
    plugins = register_plugin(StandIns(), "stand-ins")

    def resolved(run: str):
        return _resolved(plugins, tmp_path / run, {"policy": {"name": "selecting"}}, iterations=2, warmstart_epochs=2,
                         warmstart_select_episodes=3)

    whole = run_pipeline(resolved("whole"), plugins, progress=False)
    assert whole["counters/valid_transitions"] > 0
    run_pipeline(resolved("reused"), plugins, progress=False)
    shutil.rmtree(tmp_path / "reused" / "checkpoints")  # as a kill before the first checkpoint leaves it
    for name in ("metrics.jsonl", "summary.json"):
        (tmp_path / "reused" / name).unlink()
    resumed = run_pipeline(resolved("reused"), plugins, resume=True, progress=False)
    assert resumed["counters/valid_transitions"] == whole["counters/valid_transitions"]


def test_evaluating_the_valid_split_is_not_counted_as_steps_that_picked_a_policy(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    parts = {"eval": {"episodes": 6, "split": "valid"}}
    summary = run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=1), plugins, progress=False)
    assert summary["eval/episodes"] == 6 and summary["counters/valid_transitions"] == 0
    assert "validation tasks, to pick a policy" not in (tmp_path / "run" / "report.md").read_text()


def test_a_run_stopped_before_its_first_checkpoint_shows_its_first_row_once_in_tensorboard(register_plugin, tmp_path, monkeypatch):
    # TensorBoard's purge step was 0 without a checkpoint, which kept the stopped attempt's row
    # before RL (step -1): after --resume it was there twice.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", {"loggers": [{"name": "jsonl"}, {"name": "tensorboard"}]}, iterations=1)

    def stopped(runner, iteration, tmp):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_write_checkpoint", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(resolved, plugins, progress=False)
    monkeypatch.undo()
    run_pipeline(resolved, plugins, resume=True, progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval_before/success_rate")] == [-1]
