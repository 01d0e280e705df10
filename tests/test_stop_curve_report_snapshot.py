"""A stop whose cleanup fails, a curve over a damaged checkpoint, the report's heading of the
'valid' split, and a validation snapshot that cannot be written."""

from __future__ import annotations

import contextlib
import errno
import re
import signal
import types
from pathlib import Path

import click
import msgspec
import pytest
from click.testing import CliRunner

from dreamgym_core import checkpoint, loop, report, stopping
from dreamgym_core.cli import cli
from dreamgym_core.config import PipelineConfig
from dreamgym_core.errors import DataError
from dreamgym_core.loop import close_all
from dreamgym_core.selection import ValidSelection


# --- a stop, then a cleanup that fails ---------------------------------------------------


def _command(stop: bool) -> click.Command:
    """A command whose cleanup fails as a simulator killed by the same signal fails in close()."""

    @click.command("fake")
    def fake() -> None:
        try:
            if stop:
                stopping.handle(signal.SIGTERM, None)  # what the SIGTERM handler does
        finally:
            def domain_close() -> None:
                raise ConnectionResetError("simulator gone")

            close_all([domain_close])

    return fake


def test_a_cleanup_failure_after_a_stop_is_reported_as_the_stop(monkeypatch):
    monkeypatch.setitem(cli.commands, "fake", _command(stop=True))
    result = CliRunner().invoke(cli, ["fake"], prog_name="dreamgym")
    assert result.exit_code == 128 + signal.SIGTERM
    assert result.stderr.strip().splitlines() == ["Error: interrupted by SIGTERM"]
    assert stopping.requested() is None  # the command's stop ends with it


def test_a_cleanup_failure_without_a_stop_is_still_raised(monkeypatch):
    monkeypatch.setitem(cli.commands, "fake", _command(stop=False))
    result = CliRunner().invoke(cli, ["fake"], prog_name="dreamgym")
    assert result.exit_code == 1 and isinstance(result.exception, ConnectionResetError)


# --- dreamgym curve over a damaged checkpoint --------------------------------------------


class _Algo:
    def save(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "w").write_text("x")

    def load(self, path: str) -> None:
        pass


def _runner_with_checkpoints(run_dir: Path, plays: list[int], count: int) -> types.SimpleNamespace:
    runner = types.SimpleNamespace(
        run_dir=run_dir, algo=_Algo(), counters={"iteration": 0}, history=[], curriculum=None, experience_model=None,
        buffer=None, selection=None, cfg=types.SimpleNamespace(loop=types.SimpleNamespace(keep_checkpoints=0)),
        who=lambda kind: kind, _reload_policy=lambda **kw: None, _say=lambda line: None,
        evaluate=lambda **kw: plays.append(1) or {"eval/success_rate": 0.5},
    )
    for iteration in range(count):
        checkpoint.save(runner, iteration)
    return runner


def test_curve_refuses_a_damaged_checkpoint_before_playing_any(tmp_path, monkeypatch):
    plays: list[int] = []
    runner = _runner_with_checkpoints(tmp_path, plays, 4)
    damaged = tmp_path / "checkpoints" / "it-00003" / "state.json"
    damaged.write_text('{"iteration": 3, "coun')  # a truncated copy

    @contextlib.contextmanager
    def fake_runner(resolved, plugins, run_dir, progress):
        yield runner

    monkeypatch.setattr(loop, "_evaluation_runner", fake_runner)
    resolved = types.SimpleNamespace(pipeline=types.SimpleNamespace(run_dir=str(tmp_path), eval=types.SimpleNamespace(split="test")))
    with pytest.raises(DataError, match=f"^{re.escape(str(damaged))}: unreadable checkpoint state"):
        loop.evaluate_checkpoints(resolved, None)
    assert plays == []  # refused before minutes of play whose results would be lost
    assert len(loop.evaluate_checkpoints(resolved, None, [0, 1, 2])) == 3 and len(plays) == 3


# --- the report's heading of the 'valid' split -------------------------------------------


def _config(**parts) -> PipelineConfig:
    base = {"plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "algo": {"name": "a"}, "run_dir": "unused", "loop": {"mode": "real"}}
    return msgspec.convert({**base, **parts}, PipelineConfig)


def _heading(run_dir: Path, cfg: PipelineConfig) -> str:
    (run_dir / "config.sha256").write_text("abc\n")
    final = {"step": 3, "eval/success_rate": 0.75, "eval/success_ci_low": 0.5, "eval/success_ci_high": 0.9, "eval/episodes": 16.0}
    text = report.write(run_dir, cfg, [{"step": -1}, final], counters={}).read_text()
    return next(line for line in text.splitlines() if line.startswith("## ") and "real tasks" in line.lower())


@pytest.mark.parametrize(
    ("parts", "picked_by"),
    [
        ({"eval": {"split": "valid", "valid_every": 1, "keep": "best-valid"}}, "eval.keep"),
        ({"eval": {"split": "valid"}, "loop": {"mode": "real", "warmstart_select_episodes": 4}}, "loop.warmstart_select_episodes"),
    ],
)
def test_the_valid_split_the_policy_was_picked_on_is_not_called_held_out(tmp_path, parts, picked_by):
    heading = _heading(tmp_path, _config(**parts))
    assert heading == f"## Real tasks of the valid split (eval.split: not held out, {picked_by} picked the policy on it)"


@pytest.mark.parametrize(
    "parts",
    [
        {"eval": {"split": "valid"}},
        {"eval": {"split": "valid", "valid_every": 1}},  # scored on it, but the last policy is kept
        {"eval": {"split": "test", "valid_every": 1, "keep": "best-valid"}},
    ],
)
def test_a_split_no_policy_was_picked_on_stays_held_out(tmp_path, parts):
    split = parts["eval"]["split"]
    assert _heading(tmp_path, _config(**parts)) == f"## Held-out real tasks (split `{split}`)"


# --- a validation snapshot that cannot be written ----------------------------------------


def test_a_snapshot_that_fails_is_one_line_removed_and_not_recorded(tmp_path):
    root = tmp_path / "policy_best"
    selection = ValidSelection(root)

    def save(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "weights").write_text(path.name)

    def full_disk(path: Path) -> None:
        save(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    assert selection.offer(0, 0.5, save)
    with pytest.raises(DataError, match=f"^{re.escape(str(root / 'it-00003'))}: validation policy snapshot not written \\(OSError: .*No space"):
        selection.offer(3, 0.75, full_disk)
    assert [p.name for p in root.iterdir()] == ["it-00000"]  # no half-written .partial left
    assert selection.scores == {0: 0.5} and selection.best_path() == root / "it-00000"
