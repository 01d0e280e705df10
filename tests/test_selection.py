"""Validation plays during RL and the policy a run keeps (eval.valid_every, eval.keep).

The loop tests use the stand-ins of tests/stand_ins.py (test doubles); the real policy's
version, which also checks that validation leaves RL's draws alone, is in test_end_to_end.py; a run
killed between a new best and its checkpoint is in test_loop.py."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from dreamgym_core.config import PipelineConfig, resolve
from dreamgym_core.errors import ConfigError, DataError
from dreamgym_core.loop import Runner, evaluate_run, prepare_run_dir, run_pipeline
from dreamgym_core.selection import ValidSelection, best_iteration

from stand_ins import StandIns, pipeline_dict


def test_best_iteration_keeps_the_earliest_of_a_tie():
    assert best_iteration({0: 0.5, 2: 0.75, 4: 0.75, 6: 0.25}) == 2
    assert best_iteration({0: 0.5, 1: 0.25}) == 0
    with pytest.raises(ValueError):
        best_iteration({})


def _save_marker(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "weights").write_text(path.name)


def test_selection_snapshots_only_a_new_best_and_prunes_to_it(tmp_path):
    selection = ValidSelection(tmp_path / "best")
    saved = []

    def save(path):
        saved.append(path.name)
        _save_marker(path)

    assert [selection.offer(it, s, save) for it, s in [(0, 0.5), (1, 0.5), (2, 0.75), (3, 0.25)]] == [True, False, True, False]
    assert saved == [".it-00000.partial", ".it-00002.partial"]  # written aside, then renamed
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["it-00000", "it-00002"]
    selection.prune()
    assert [p.name for p in (tmp_path / "best").iterdir()] == ["it-00002"]
    assert selection.best_path() == tmp_path / "best" / "it-00002"
    assert selection.metrics() == {"valid/best_iteration": 2.0, "valid/best_success_rate": 0.75}
    again = ValidSelection(tmp_path / "best")
    again.load_state_dict(json.loads(json.dumps(selection.state_dict())))
    assert again.scores == selection.scores and again.best == 2


def test_selection_without_a_save_keeps_scores_only(tmp_path):
    selection = ValidSelection(tmp_path / "best")
    assert selection.offer(0, 0.25, None) and selection.offer(1, 0.5, None)
    assert not (tmp_path / "best").exists() and selection.best == 1


def test_a_lost_snapshot_is_named_in_the_error(tmp_path):
    selection = ValidSelection(tmp_path / "best")
    with pytest.raises(DataError, match="no validation score recorded"):
        selection.best_path()
    selection.offer(3, 0.5, _save_marker)
    (tmp_path / "best" / "it-00003" / "weights").unlink()
    (tmp_path / "best" / "it-00003").rmdir()
    with pytest.raises(DataError, match=r"best/it-00003: the snapshot of the best validation policy \(iteration 3\) is missing"):
        selection.best_path()


def _resolved(plugins, run_dir: Path, eval_cfg: dict, policy: str = "scripted-saving", **loop):
    data = pipeline_dict(str(run_dir), **loop)
    data["policy"]["name"] = policy
    data["eval"] |= eval_cfg
    return resolve(msgspec.convert(data, type=PipelineConfig), plugins, where="inline.yaml")


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


KEEP_BEST = {"valid_every": 2, "valid_episodes": 6, "keep": "best-valid"}


def test_run_scores_validation_and_evaluates_the_best_policy(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_dir = tmp_path / "run"
    resolved = _resolved(plugins, run_dir, KEEP_BEST, iterations=5)
    runner = Runner(resolved, plugins, prepare_run_dir(resolved, resume=False))
    summary = runner.run(resume=False)
    rows = _rows(run_dir)
    # the warm start (logged with the step -1 row), every second iteration, and the last
    scored = {int(r["step"]) + 1: r["valid/success_rate"] for r in rows if "valid/success_rate" in r}
    assert sorted(scored) == [0, 2, 4, 5]
    best = best_iteration(scored)
    assert summary["eval/policy_iteration"] == best == rows[-2]["valid/best_iteration"]
    assert runner.policy.reloaded == str(run_dir / "policy_best" / f"it-{best:05d}")  # before the final evaluation
    assert [p.name for p in (run_dir / "policy_best").iterdir()] == [f"it-{best:05d}"]
    assert f"The policy evaluated after RL is iteration {best}'s (best-valid)." in (run_dir / "report.md").read_text()
    # dreamgym eval plays the kept policy too
    evaluated = evaluate_run(_resolved(plugins, run_dir, KEEP_BEST, iterations=5), plugins, split="test", episodes=6)
    assert evaluated["eval/policy_iteration"] == best and evaluated["checkpoint_iteration"] == 5


def test_keep_last_scores_validation_without_snapshots(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    summary = run_pipeline(_resolved(plugins, tmp_path / "run", {"valid_every": 1}, policy="scripted", iterations=2), plugins)
    assert summary["eval/policy_iteration"] == 2.0
    assert not (tmp_path / "run" / "policy_best").exists()
    assert sum("valid/success_rate" in r for r in _rows(tmp_path / "run")) == 3


def test_validation_plays_are_counted_as_real_transitions_apart(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_dir = tmp_path / "run"
    summary = run_pipeline(_resolved(plugins, run_dir, {"valid_every": 1}, policy="scripted", iterations=2), plugins)
    played = sum(r["valid/episode_length"] * r["valid/episodes"] for r in _rows(run_dir) if "valid/success_rate" in r)
    assert played > 0 and summary["counters/valid_transitions"] == played
    # each iteration's row counts what was played up to it, its own validation included
    so_far = 0.0
    for row in _rows(run_dir):
        so_far += row.get("valid/episode_length", 0.0) * row.get("valid/episodes", 0.0)
        if "counters/valid_transitions" in row:
            assert row["counters/valid_transitions"] == so_far, row["step"]
    assert f"real transitions on validation tasks, to pick a policy (not trained on): {int(played)}" in (run_dir / "report.md").read_text()


def test_validation_settings_are_checked_before_the_run(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    with pytest.raises(ConfigError, match=r"inline.yaml: eval.keep='best-valid' snapshots the policy, and policy 'scripted' cannot"):
        run_pipeline(_resolved(plugins, tmp_path / "b", KEEP_BEST, policy="scripted"), plugins)
    assert not (tmp_path / "b" / "offline.jsonl").exists()  # nothing was collected first


def test_resume_needs_the_kept_snapshot(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_dir = tmp_path / "run"
    run_pipeline(_resolved(plugins, run_dir, KEEP_BEST, iterations=2), plugins)
    (run_dir / "summary.json").unlink()  # as a kill during the final evaluation leaves it: the run continues
    for snapshot in (run_dir / "policy_best").iterdir():
        (snapshot / "weights.json").unlink()
        snapshot.rmdir()
    with pytest.raises(DataError, match=r"policy_best/it-0000\d: the snapshot of the best validation policy"):
        run_pipeline(_resolved(plugins, run_dir, KEEP_BEST, iterations=2), plugins, resume=True)


def test_a_run_puts_torchs_thread_count_back(register_plugin, tmp_path, monkeypatch):
    import torch

    import stand_ins

    plugins = register_plugin(StandIns(), "stand-ins")
    before = torch.get_num_threads()
    seen = []
    build = stand_ins.ScriptedPolicy.__init__

    def build_setting_threads(self, *args, **kwargs):  # as the hf backend's cpu_threads does
        torch.set_num_threads(1 if before != 1 else 2)
        seen.append(torch.get_num_threads())
        build(self, *args, **kwargs)

    monkeypatch.setattr(stand_ins.ScriptedPolicy, "__init__", build_setting_threads)
    try:
        run_pipeline(_resolved(plugins, tmp_path / "run", {}, policy="scripted", iterations=1), plugins)
        assert seen and seen[0] != before
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_rng_kept_puts_every_global_generator_back():
    import random

    import numpy as np
    import torch

    from dreamgym_core.checkpoint import rng_kept

    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    expected = draw()
    random.setstate(python_state), np.random.set_state(numpy_state), torch.set_rng_state(torch_state)
    with rng_kept():
        assert draw() == expected  # the same state inside ...
    assert draw() == expected  # ... and put back after it


def test_checkpoint_pruning_keeps_the_newest_by_number_past_it_99999(tmp_path):
    from dreamgym_core.checkpoint import prune

    for name in ("it-99998", "it-99999", "it-100000", "it-notes"):
        (tmp_path / name).mkdir()
    prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["it-100000", "it-99999", "it-notes"]
