"""Checkpoints a kill or a damaged file leaves behind (dreamgym_core.checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from dreamgym_core import checkpoint
from dreamgym_core.config import PipelineConfig, resolve
from dreamgym_core.errors import ConfigError, DataError
from dreamgym_core.loop import run_pipeline

from stand_ins import StandIns, pipeline_dict


class _Killed(Exception):
    """Where a kill lands (SIGKILL, or the stop SIGTERM raises anywhere)."""


def _resolved(plugins, run_dir: Path, **loop):
    return resolve(msgspec.convert(pipeline_dict(str(run_dir), **loop), type=PipelineConfig), plugins, where="inline.yaml")


def _rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")} for line in lines]


def test_a_run_killed_before_its_first_pointer_resumes_from_that_checkpoint(register_plugin, tmp_path, monkeypatch, capsys):
    # The kill between it-00000's rename and `latest`'s write left a whole checkpoint that
    # neither a fresh start ("already holds a run") nor --resume ("restore the pointer") took.
    plugins = register_plugin(StandIns(), "stand-ins")
    whole = run_pipeline(_resolved(plugins, tmp_path / "whole", iterations=2), plugins)
    run_dir = tmp_path / "killed"
    write = checkpoint.atomic_write

    def killed_before_the_first_pointer(path: Path, data: bytes) -> None:
        if path.name == "latest":
            raise _Killed
        write(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write", killed_before_the_first_pointer)
    with pytest.raises(_Killed):
        run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["it-00000"]
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins)

    # Resumed, and killed again at its next checkpoint: the pointer was written back first.
    def killed_at_the_next_checkpoint(runner, iteration):
        raise _Killed

    monkeypatch.setattr(checkpoint, "atomic_write", write)
    monkeypatch.setattr(checkpoint, "save", killed_at_the_next_checkpoint)
    capsys.readouterr()
    with pytest.raises(_Killed):
        run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins, resume=True)
    assert "checkpoints/latest: missing; continuing from it-00000, the newest checkpoint that reads\n" in capsys.readouterr().err
    assert (run_dir / "checkpoints" / "latest").read_text() == "it-00000"

    monkeypatch.undo()
    resumed = run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins, resume=True)
    assert resumed | {"run_dir": ""} == whole | {"run_dir": ""}
    assert _rows(run_dir) == _rows(tmp_path / "whole")


def test_a_missing_pointer_skips_checkpoints_whose_state_does_not_read(register_plugin, tmp_path, capsys):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_dir = tmp_path / "run"
    run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins)
    rows = _rows(run_dir)
    (run_dir / "summary.json").unlink()  # as a kill during the final evaluation leaves it
    (run_dir / "checkpoints" / "latest").unlink()
    (run_dir / "checkpoints" / "it-00002" / "state.json").write_text("{")
    state = json.loads((run_dir / "checkpoints" / "it-00001" / "state.json").read_text())
    (run_dir / "checkpoints" / "it-00001" / "state.json").write_text(json.dumps(state | {"iteration": 7}))
    capsys.readouterr()
    run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins, resume=True)
    assert "latest: missing; continuing from it-00000, the newest checkpoint that reads (unreadable: it-00001, it-00002)" in capsys.readouterr().err
    assert _rows(run_dir) == rows  # iterations 0 and 1 played again, as they were
    assert json.loads((run_dir / "checkpoints" / "it-00002" / "state.json").read_text())["iteration"] == 2


def _with_value(state: dict, field: str, value: object, *where: object) -> dict:
    part = state[field]
    for key in where[:-1]:
        part = part[key]
    part[where[-1]] = value
    return state


@pytest.mark.parametrize(
    "field, where, value",
    [
        ("numpy_rng", ("keys", 0), -1),  # these three were OverflowError tracebacks
        ("numpy_rng", ("keys", 0), 2**32),
        ("numpy_rng", ("pos",), 2**70),
        ("numpy_rng", ("pos",), 625),  # taken as it was: draws read past the key array
        ("python_rng", (1, 0), 2**40),  # taken as it was: truncated to 32 bits
        ("python_rng", (2,), "x"),  # kept as the cached gauss, a TypeError at the first draw
        ("torch_rng", (0,), -1),  # taken as it was: wrapped to 255
        ("torch_rng", (0,), 256),
    ],
)
def test_random_state_out_of_range_is_one_line_naming_the_file(register_plugin, tmp_path, field, where, value):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_dir = tmp_path / "run"
    run_pipeline(_resolved(plugins, run_dir, iterations=1), plugins)
    (run_dir / "summary.json").unlink()
    state_file = run_dir / "checkpoints" / "it-00001" / "state.json"
    state_file.write_text(json.dumps(_with_value(json.loads(state_file.read_text()), field, value, *where)))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=r"it-00001/state.json: unusable random-generator state: "):
        run_pipeline(_resolved(plugins, run_dir, iterations=1), plugins, resume=True)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_prune_killed_mid_delete_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    # A half-deleted it-<n> stayed among the checkpoints: dreamgym curve failed on its missing
    # state.json, and after the run's last checkpoint no later prune removed it.
    for i in range(4):
        (tmp_path / checkpoint.checkpoint_name(i) / "policy").mkdir(parents=True)
        (tmp_path / checkpoint.checkpoint_name(i) / "state.json").write_text("{}")

    def killed_part_way(path, *args, **kwargs):
        (Path(path) / "state.json").unlink()
        raise _Killed

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_part_way)
    with pytest.raises(_Killed):
        checkpoint.prune(tmp_path, keep=2)
    assert checkpoint.checkpoint_iterations(tmp_path) == [1, 2, 3]
    monkeypatch.undo()
    checkpoint.prune(tmp_path, keep=2)  # the next checkpoint's prune removes what the kill left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["it-00002", "it-00003"]


def test_a_checkpoint_that_cannot_be_written_is_one_error_and_leaves_the_earlier_ones(register_plugin, tmp_path, monkeypatch):
    # A full disk during the trainer's save raised torch's own RuntimeError ("unexpected pos"),
    # a traceback, and left the half-written .it-00001.partial directory behind.
    from stand_ins import RecordingAlgo

    plugins = register_plugin(StandIns(), "stand-ins")
    run_dir = tmp_path / "run"
    save = RecordingAlgo.save
    calls = []

    def full_disk_at_the_second(self, *, path: str) -> None:
        calls.append(path)
        save(self, path=path)
        if len(calls) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 166784 vs 166672")

    monkeypatch.setattr(RecordingAlgo, "save", full_disk_at_the_second)
    with pytest.raises(DataError, match=r"checkpoints/it-00001: checkpoint not written \(RuntimeError: \[enforce fail.*"
                                        r"the run's earlier checkpoints are kept$"):
        run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins)
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["it-00000", "latest"]
    assert (root / "latest").read_text() == "it-00000"
    monkeypatch.undo()
    assert run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins, resume=True)["counters/iteration"] == 2


def test_a_record_file_whose_write_fails_keeps_the_old_file_and_leaves_no_tmp(tmp_path, monkeypatch):
    # A full disk was an OSError traceback that left the half-written .tmp beside the old file.
    import errno
    import os

    path = tmp_path / "trajectories.jsonl"
    path.write_bytes(b"old\n")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", no_space)
    for write in (lambda: checkpoint.write_records(path, []), lambda: checkpoint.atomic_write(path, b"new\n")):
        with pytest.raises(DataError, match=rf"^{path}: cannot write: No space left on device; the file there before is kept$"):
            write()
        assert path.read_bytes() == b"old\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["trajectories.jsonl"]


def test_a_checkpoint_is_on_disk_before_its_pointer_names_it_and_prune_removes_the_one_before(register_plugin, tmp_path, monkeypatch):
    """Only state.json and `latest` were synced: the trainer's weight files and the renames were
    not, so a power cut could leave `latest` naming a checkpoint of empty files after prune had
    removed the one before."""
    import os

    plugins = register_plugin(StandIns(), "stand-ins")
    run_dir = tmp_path / "run"
    events: list[tuple[str, str]] = []
    fsync, prune = os.fsync, checkpoint.prune

    def recorded_fsync(fd: int) -> None:
        events.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recorded_prune(root: Path, *, keep: int) -> None:
        events.append(("prune", str(root)))
        prune(root, keep=keep)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(checkpoint, "prune", recorded_prune)
    run_pipeline(_resolved(plugins, run_dir, iterations=1), plugins)
    root = (run_dir / "checkpoints").resolve()
    first_prune = events.index(("prune", str(run_dir / "checkpoints")))
    synced = {path for kind, path in events[:first_prune] if kind == "sync"}
    partial = str(root / ".it-00000.partial")
    written = {str(p).replace(str(root / "it-00000"), partial) for p in (root / "it-00000").rglob("*")}
    assert written and written <= synced  # every file and directory of the checkpoint, as written
    assert partial in synced and str(root) in synced  # the checkpoint's directory and its rename
    last_root_sync = max(i for i, event in enumerate(events[:first_prune]) if event == ("sync", str(root)))
    pointer_sync = max(i for i, event in enumerate(events[:first_prune]) if event[1].endswith("latest.tmp"))
    assert last_root_sync > pointer_sync  # the pointer's rename too
