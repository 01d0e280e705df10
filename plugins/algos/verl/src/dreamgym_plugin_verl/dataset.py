"""verl's ``data.custom_cls``: DreamGym tasks as verl dataset rows.

verl 0.9.1 builds its train sampler itself (random or sequential, no plug-in
class), so the curriculum is wired through the dataset: with a feed spec beside
the task file (``<file>.feed.json``, written by the trainer) rows come from the
shared curriculum actor, one curriculum batch per step; without one (validation)
rows are the file's tasks in order, marked so that their episodes are not published.

A resumed verl run (``trainer.resume_mode``) restores its dataloader, which goes on at
the checkpoint's row; the dataset is built afresh. So every row is a function of its
index (the curriculum-free feed cycles by step), and the dataset's ``state_dict`` /
``load_state_dict`` (torchdata's StatefulDataLoader saves them in verl's ``data.pt``)
carry the curriculum actor's state.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
from torch.utils.data import Dataset

from dreamgym_core.checkpoint import atomic_write
from dreamgym_core.errors import DataError
from dreamgym_core.records import Task
from dreamgym_core.stages import seed_task_of

from .curriculum import RemoteCurriculum, TaskFeed, phase_for, task_row

__all__ = ["DreamGymTaskDataset", "read_tasks", "write_tasks", "feed_spec_path"]


def feed_spec_path(task_file: str | Path) -> Path:
    return Path(str(task_file) + ".feed.json")


def write_tasks(path: Path, tasks: list[Task]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, b"".join(msgspec.json.encode(t) + b"\n" for t in tasks))


def read_tasks(path: str | Path) -> list[Task]:
    """Task records, one JSON object a line; a bad line is named by file and number."""
    tasks = []
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read task file: {exc.strerror or exc}") from exc
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                tasks.append(msgspec.json.decode(line, type=Task))
            except msgspec.DecodeError as exc:
                raise DataError(f"{path}:{number}: not a Task record: {exc}") from exc
    if not tasks:
        raise DataError(f"{path}: no tasks")
    return tasks


class DreamGymTaskDataset(Dataset):
    """Constructed by verl as ``cls(data_files=, tokenizer=, processor=, config=, max_samples=)``."""

    def __init__(self, data_files: Any, tokenizer: Any = None, processor: Any = None, config: Any = None, max_samples: int = -1) -> None:
        files = [data_files] if isinstance(data_files, (str, Path)) else list(data_files)
        self.tasks = [task for f in files for task in read_tasks(f)]
        if max_samples and max_samples > 0:
            self.tasks = self.tasks[:max_samples]
        self.curriculum: RemoteCurriculum | None = None
        spec = feed_spec_path(files[0])
        self.feed = self._feed(json.loads(spec.read_text())) if spec.exists() else None

    def _feed(self, spec: dict[str, Any]) -> TaskFeed:
        phase = partial(phase_for, mode=spec["mode"], iterations=spec["iterations"], s2r_synthetic_share=spec["s2r_synthetic_share"])
        self._phase, self._real_as_seed = phase, bool(spec.get("real_as_seed"))
        next_tasks = self._cycle
        if spec.get("curriculum_actor"):
            self.curriculum = RemoteCurriculum.connect(spec["curriculum_actor"])
            next_tasks = self._draw
        return TaskFeed(next_tasks, batch_size=spec["batch_size"], iterations=spec["iterations"], phase=phase, seed=spec["seed"])

    def _draw(self, n: int, step: int) -> list[Task]:
        """The curriculum's next tasks: it draws in order, and verl asks step by step."""
        assert self.curriculum is not None
        tasks = self.curriculum.next_tasks(n)
        if self._real_as_seed and self._phase(step) == "real":
            return [self._as_seed(task) for task in tasks]
        return tasks

    def _as_seed(self, task: Task) -> Task:
        """A real step plays a curriculum-written task as its seed task (the domain has no
        make_variation: the copy's new instruction is not what the real environment scores), as the
        local loop does (dreamgym_core.loop.Runner._as_seed_tasks)."""
        seed = seed_task_of(task, self.tasks)
        if seed is None:
            raise DataError(
                f"curriculum task {task.id!r} (origin {task.origin!r}) reached a real step, and no train task has its world "
                "to play instead (the env has no make_variation); use loop.mode 'dreamgym' or another curriculum"
            )
        return seed

    def _cycle(self, n: int, step: int) -> list[Task]:
        """No curriculum: the file's tasks in order, wrapping around. Placed by ``step``, not by
        a count of calls, so a resumed run (a fresh dataset) goes on where the checkpoint was."""
        return [self.tasks[(step * n + i) % len(self.tasks)] for i in range(n)]

    def state_dict(self) -> dict[str, Any]:
        """Saved by verl's StatefulDataLoader with each checkpoint: the curriculum's state."""
        return {"curriculum": self.curriculum.state_dict()} if self.curriculum is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed run's curriculum (the actor starts afresh) goes on from the checkpoint."""
        if self.curriculum is not None and state.get("curriculum"):
            self.curriculum.load_state_dict(state["curriculum"])

    def __len__(self) -> int:
        return len(self.feed) if self.feed is not None else len(self.tasks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.feed is not None:
            return self.feed.row(int(index))
        # Validation (verl's val files): played like evaluation, never stored nor observed.
        return task_row(self.tasks[index], index=int(index), phase="real", seed=10_000 + int(index), publish=False)
