"""Damaged checkpoint state that resumed silently, and the buffer seeded twice (review fixes)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from dreamgym_core import checkpoint
from dreamgym_core.config import PipelineConfig, resolve
from dreamgym_core.errors import DataError
from dreamgym_core.loop import Runner, prepare_run_dir, run_pipeline

from conftest import stored_transitions
from stand_ins import StandIns, pipeline_dict


class _Killed(BaseException):
    """Where a kill lands."""


def _plugins(register_plugin):
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    register_plugin(pytest.importorskip("dreamgym_plugin_uniform"), "uniform")
    return register_plugin(StandIns(), "stand-ins")


def _full(plugins, run_dir: Path, **loop):
    # every component a checkpoint holds state for: curriculum, experience model, validation scores
    d = pipeline_dict(str(run_dir), mode="dreamgym", **({"iterations": 1} | loop))
    d |= {"experience_model": {"name": "dice-lm"}, "encoder": {"name": "hashing"}, "buffer": {"name": "exact"},
          "curriculum": {"name": "uniform"}, "eval": {"episodes": 2, "valid_every": 1, "valid_episodes": 2}}  # fmt: skip
    return resolve(msgspec.convert(d, type=PipelineConfig), plugins, where="inline.yaml")


def _damaged(plugins, run_dir: Path, change) -> dict:
    run_pipeline(_full(plugins, run_dir), plugins, progress=False)
    (run_dir / "summary.json").unlink()  # as a kill during the final evaluation leaves it
    state_file = run_dir / "checkpoints" / "it-00001" / "state.json"
    state = json.loads(state_file.read_text())
    change(state)
    state_file.write_text(json.dumps(state))
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.parametrize("field", ["curriculum", "experience_model", "selection"])
def test_a_null_component_state_the_run_has_is_one_line_naming_the_file_and_field(register_plugin, tmp_path, field):
    # Skipped before: the resumed run restarted the experience model's call count (draws repeated),
    # the curriculum's state, or forgot the validation scores, without a word.
    plugins = _plugins(register_plugin)
    run_dir = tmp_path / "run"
    before = _damaged(plugins, run_dir, lambda state: state.__setitem__(field, None))
    with pytest.raises(DataError, match=rf"it-00001/state.json: '{field}' is null, but this run has that component; the checkpoint is damaged$"):
        run_pipeline(_full(plugins, run_dir), plugins, resume=True, progress=False)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_null_component_states_of_a_run_without_them_still_resume(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_dir = tmp_path / "run"
    resolved = resolve(msgspec.convert(pipeline_dict(str(run_dir), iterations=1), type=PipelineConfig), plugins, where="inline.yaml")
    whole = run_pipeline(resolved, plugins, progress=False)
    state = json.loads((run_dir / "checkpoints" / "it-00001" / "state.json").read_text())
    assert (state["curriculum"], state["experience_model"], state["selection"]) == (None, None, None)
    (run_dir / "summary.json").unlink()
    assert run_pipeline(resolved, plugins, resume=True, progress=False) | {"run_dir": ""} == whole | {"run_dir": ""}


def test_a_checkpoint_from_before_validation_scores_were_kept_still_resumes(register_plugin, tmp_path):
    plugins = _plugins(register_plugin)
    run_dir = tmp_path / "run"
    _damaged(plugins, run_dir, lambda state: state.pop("selection"))
    run_pipeline(_full(plugins, run_dir), plugins, resume=True, progress=False)
    assert (run_dir / "summary.json").is_file()


@pytest.mark.parametrize(
    "where, value",
    [
        (("calls",), -1),  # taken: draws of earlier calls repeated
        (("calls",), 1.5),  # truncated to 1
        (("calls",), "3"),
        (("calls",), True),
        (("counters", "requests"), "x"),  # resumed, then a TypeError mid-run that blamed the plugin
        (("counters", "requests"), -2),
        (("counters", "retries"), 0.5),
    ],
)
def test_a_damaged_experience_model_state_is_one_line_naming_the_file(register_plugin, tmp_path, where, value):
    plugins = _plugins(register_plugin)
    run_dir = tmp_path / "run"

    def damage(state):
        part = state["experience_model"]
        for key in where[:-1]:
            part = part[key]
        part[where[-1]] = value

    before = _damaged(plugins, run_dir, damage)
    with pytest.raises(DataError, match=r"it-00001/state.json: cannot restore the experience model's state: .*must be a non-negative integer, got "):
        run_pipeline(_full(plugins, run_dir), plugins, resume=True, progress=False)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_damaged_experience_model_state_sets_nothing(register_plugin, tmp_path):
    plugins = _plugins(register_plugin)
    runner = Runner(_full(plugins, tmp_path / "run"), plugins, prepare_run_dir(_full(plugins, tmp_path / "run"), resume=False))
    model = runner.experience_model
    model._calls, good = 5, dict(model.counters)
    with pytest.raises(DataError, match=r"counters\['retries'\] must be a non-negative integer, got 'x'"):
        model.load_state_dict({"calls": 9, "counters": {"requests": 7, "retries": "x"}})
    assert (model._calls, model.counters) == (5, good)
    runner.buffer.close()


def test_a_kill_between_a_checkpoint_and_its_pointer_resumes_from_the_one_before(register_plugin, tmp_path, monkeypatch):
    # What checkpoint's docstring says: it-00002 is whole but unnamed, --resume takes it-00000
    # (the one `latest` names) and plays iterations 0 and 1 again, to the same result.
    plugins = register_plugin(StandIns(), "stand-ins")

    def resolved(run_dir):
        d = pipeline_dict(str(run_dir), iterations=3, checkpoint_every=2)
        return resolve(msgspec.convert(d, type=PipelineConfig), plugins, where="inline.yaml")

    whole = run_pipeline(resolved(tmp_path / "whole"), plugins, progress=False)
    write = checkpoint.atomic_write

    def killed_before_the_pointer(path: Path, data: bytes) -> None:
        if path.name == "latest" and data == b"it-00002":
            raise _Killed
        write(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write", killed_before_the_pointer)
    with pytest.raises(_Killed):
        run_pipeline(resolved(tmp_path / "killed"), plugins, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "killed" / "checkpoints" / "latest").read_text() == "it-00000"
    assert (tmp_path / "killed" / "checkpoints" / "it-00002" / "state.json").is_file()
    loaded = []
    load = checkpoint.load
    monkeypatch.setattr(checkpoint, "load", lambda runner, name, **kw: loaded.append(name) or load(runner, name, **kw))
    resumed = run_pipeline(resolved(tmp_path / "killed"), plugins, resume=True, progress=False)
    assert loaded == ["it-00000"]
    assert resumed | {"run_dir": ""} == whole | {"run_dir": ""}


def test_a_kill_after_the_seed_flush_before_its_marker_does_not_seed_the_buffer_twice(register_plugin, tmp_path, monkeypatch):
    # dedup none: the resumed run found no marker and stored the seed transitions again.
    plugins = _plugins(register_plugin)

    def resolved(run_dir):
        d = pipeline_dict(str(run_dir), iterations=1)
        d |= {"encoder": {"name": "hashing"}, "buffer": {"name": "exact", "config": {"dedup": "none"}}}
        return resolve(msgspec.convert(d, type=PipelineConfig), plugins, where="inline.yaml")

    run_pipeline(resolved(tmp_path / "whole"), plugins, progress=False)
    run_dir = tmp_path / "run"
    runner = Runner(resolved(run_dir), plugins, prepare_run_dir(resolved(run_dir), resume=False))
    flush = runner.buffer.flush

    def killed_after_the_flush() -> None:
        flush()
        raise _Killed

    monkeypatch.setattr(runner.buffer, "flush", killed_after_the_flush)
    with pytest.raises(_Killed):
        runner._seed_buffer([t for traj in runner._collect_offline() for t in traj.transitions])
    monkeypatch.undo()
    runner.buffer.close()
    run_pipeline(resolved(run_dir), plugins, resume=True, progress=False)
    assert stored_transitions(run_dir) == stored_transitions(tmp_path / "whole")
