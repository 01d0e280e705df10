"""Files the verl backend writes into the run directory are never written through a link
planted at their name (a run directory others can write to): each replaces the link.

Plain file writes, called directly: nothing here starts verl or needs CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dreamgym_core.records import Task
from dreamgym_plugin_verl import warmstart
from dreamgym_plugin_verl.dataset import feed_spec_path, read_tasks, write_tasks
from dreamgym_plugin_verl.trainer import _write_overrides, prepare_files
from dreamgym_plugin_verl.translate import WARMSTART_DIR, run_files

pytest.importorskip("torch")
TASKS = [Task(id=f"t{i}", instruction=f"task {i}", domain="d") for i in range(2)]
PIPELINE = {
    "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "loop": {"mode": "real"},
    "algo": {"name": "verl-grpo", "config": {"model_path": "/m"}},
}


def _plant(link: Path, victim: Path) -> None:
    """``link`` -> ``victim``, a file outside the run directory holding text of its own."""
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text("precious\n")
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(victim, link)


def _replaced(link: Path, victim: Path) -> bool:
    return victim.read_text() == "precious\n" and link.is_file() and not link.is_symlink()


def test_a_task_file_replaces_a_link_planted_at_its_name(tmp_path):
    target = tmp_path / "run" / "verl" / "train_tasks.jsonl"
    _plant(target, tmp_path / "elsewhere" / "victim")
    write_tasks(target, TASKS)
    assert _replaced(target, tmp_path / "elsewhere" / "victim")
    assert read_tasks(target) == TASKS


@pytest.mark.parametrize("name", ["train_tasks.jsonl.feed.json", "agent_loop.yaml", "runtime.json"])
def test_the_files_prepared_for_verl_replace_a_link_planted_at_their_name(resolve_dict, tmp_path, name):
    run = tmp_path / "run"
    victim = tmp_path / "elsewhere" / "victim"
    _plant(run / "verl" / name, victim)
    files = prepare_files(resolve_dict(PIPELINE), run, train=TASKS, val=TASKS, actors={"buffer_actor": "b"})
    assert _replaced(run / "verl" / name, victim)
    assert feed_spec_path(files["train"]).is_file()


def test_the_overrides_file_replaces_a_link_planted_at_its_name(tmp_path):
    directory = run_files(tmp_path / "run")["dir"]
    victim = tmp_path / "elsewhere" / "victim"
    _plant(directory / "overrides.txt", victim)
    path = _write_overrides(directory, ["a=1", "b=2"])
    assert _replaced(path, victim) and path.read_text() == "a=1\nb=2\n"


class _SavesInPlace:
    def save(self, *, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "weights").write_bytes(b"w")


def test_the_warm_starts_done_marker_is_not_written_through_a_planted_link(resolve_dict, tmp_path, monkeypatch):
    # before: write_text followed the link and created the file it names outside the run
    # directory (a link to a missing file: one to an existing file reads as a finished stage)
    monkeypatch.setattr(warmstart, "_policy", lambda resolved, plugins: _SavesInPlace())
    monkeypatch.setattr(warmstart, "_reflections", lambda *args: None)
    run = tmp_path / "run"
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    (run / WARMSTART_DIR).mkdir(parents=True)
    os.symlink(victim, run / WARMSTART_DIR / "done")
    warmstart.warm_start(resolve_dict(PIPELINE), None, [], run_dir=run, say=lambda _: None)
    done = run / WARMSTART_DIR / "done"
    assert not victim.exists()
    assert done.is_file() and not done.is_symlink() and done.read_text() == "1\n"


def test_a_link_planted_at_the_warm_starts_done_marker_is_not_a_finished_warm_start(resolve_dict, tmp_path, monkeypatch):
    # before: the check was (policy_init / "done").exists(), which follows the link: one to
    # any file skipped the warm start, and verl's actor loaded whatever policy_init held
    saved: list[str] = []
    monkeypatch.setattr(warmstart, "_policy", lambda resolved, plugins: _SavesInPlace())
    monkeypatch.setattr(warmstart, "_reflections", lambda *args: None)
    monkeypatch.setattr(_SavesInPlace, "save", lambda self, *, path: saved.append(path) or Path(path).mkdir(exist_ok=True))
    run = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("1\n")
    (run / WARMSTART_DIR).mkdir(parents=True)
    os.symlink(elsewhere, run / WARMSTART_DIR / "done")
    lines: list[str] = []
    warmstart.warm_start(resolve_dict(PIPELINE), None, [], run_dir=run, say=lines.append)
    assert saved == [str(run / WARMSTART_DIR)] and not (run / WARMSTART_DIR / "done").is_symlink()
    warmstart.warm_start(resolve_dict(PIPELINE), None, [], run_dir=run, say=lines.append)  # its own marker now
    assert len(saved) == 1 and lines[-1].startswith("reusing the warm-started policy")
