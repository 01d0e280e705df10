"""Curriculum wiring without Ray: outcome groups, the task feed, dataset rows, phases."""

from __future__ import annotations

import json

import msgspec
import pytest

from dreamgym_core.errors import DataError
from dreamgym_core.records import Task, TaskOutcome
from dreamgym_plugin_verl.curriculum import CurriculumActor, OutcomeGroups, TaskFeed, phase_for
from dreamgym_plugin_verl.dataset import DreamGymTaskDataset, feed_spec_path, write_tasks

TASKS = [Task(id=f"t{i}", instruction=f"task {i}", domain="d") for i in range(5)]


class RecordingCurriculum:
    """Test curriculum: hands out tasks in order and records what it observes."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.observed: list[TaskOutcome] = []

    def next_tasks(self, *, n: int) -> list[Task]:
        self.calls.append(n)
        start = sum(self.calls[:-1])
        return [TASKS[(start + i) % len(TASKS)] for i in range(n)]

    def observe(self, *, outcomes) -> None:
        self.observed += list(outcomes)

    def state_dict(self):
        return {"calls": self.calls}


def test_outcome_groups_complete_per_task():
    groups = OutcomeGroups(group_size=3)
    assert groups.add(TaskOutcome(task=TASKS[0], rewards=[1.0])) == []
    assert groups.add(TaskOutcome(task=TASKS[1], rewards=[0.0])) == []
    assert groups.add(TaskOutcome(task=TASKS[0], rewards=[0.0])) == []
    done = groups.add(TaskOutcome(task=TASKS[0], rewards=[1.0]))
    assert done == [TaskOutcome(task=TASKS[0], rewards=[1.0, 0.0, 1.0])]
    assert list(groups.pending) == ["t1"]


def test_curriculum_actor_logic_in_process():
    actor = CurriculumActor(RecordingCurriculum, group_size=2)
    tasks = msgspec.msgpack.decode(actor.next_tasks(2), type=list[Task])
    assert tasks == TASKS[:2]
    encode = msgspec.msgpack.encode
    assert actor.record(encode(TaskOutcome(task=TASKS[0], rewards=[1.0]))) == 0
    assert actor.record(encode(TaskOutcome(task=TASKS[0], rewards=[0.0]))) == 1
    assert actor.curriculum.observed == [TaskOutcome(task=TASKS[0], rewards=[1.0, 0.0])]


def test_feed_asks_once_per_step_in_sequential_order():
    curriculum = RecordingCurriculum()
    feed = TaskFeed(lambda n: curriculum.next_tasks(n=n), batch_size=2, iterations=3, phase=lambda s: "synthetic")
    assert len(feed) == 6
    ids = [feed.task(i)[1].id for i in range(6)]
    assert ids == ["t0", "t1", "t2", "t3", "t4", "t0"]
    assert curriculum.calls == [2, 2, 2]
    assert [feed.task(i)[0] for i in range(6)] == [0, 0, 1, 1, 2, 2]


def test_feed_rejects_short_batches():
    feed = TaskFeed(lambda n: TASKS[:1], batch_size=2, iterations=1, phase=lambda s: "real")
    with pytest.raises(Exception, match="curriculum returned 1 tasks for a batch of 2"):
        feed.task(0)


@pytest.mark.parametrize(
    ("mode", "phases"),
    [("dreamgym", ["synthetic"] * 4), ("real", ["real"] * 4), ("s2r", ["synthetic", "synthetic", "synthetic", "real"])],
)
def test_phase_for(mode, phases):
    assert [phase_for(i, mode=mode, iterations=4, s2r_synthetic_share=0.75) for i in range(4)] == phases


def test_dataset_rows_carry_task_phase_and_agent(tmp_path):
    path = tmp_path / "train_tasks.jsonl"
    write_tasks(path, TASKS)
    spec = {"batch_size": 2, "iterations": 2, "mode": "s2r", "s2r_synthetic_share": 0.5, "seed": 1, "curriculum_actor": ""}
    feed_spec_path(path).write_text(json.dumps(spec))
    ds = DreamGymTaskDataset(data_files=[str(path)], tokenizer=None, processor=None, config=None)
    assert len(ds) == 4
    rows = [ds[i] for i in range(4)]
    assert [r["phase"] for r in rows] == ["synthetic", "synthetic", "real", "real"]
    assert msgspec.json.decode(rows[2]["task"], type=Task) == TASKS[2]
    assert rows[0]["agent_name"] == "dreamgym_agent" and rows[0]["raw_prompt"][0]["content"] == "task 0"
    assert len({r["seed"] for r in rows}) == 4


def test_validation_dataset_is_the_file_in_order(tmp_path):
    path = tmp_path / "val_tasks.jsonl"
    write_tasks(path, TASKS[:3])
    ds = DreamGymTaskDataset(data_files=str(path))
    assert len(ds) == 3 and ds[1]["phase"] == "real" and "t1" in ds[1]["task"]


def test_bad_task_file_names_file_and_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(msgspec.json.encode(TASKS[0]).decode() + "\n{\"id\": 3}\n")
    with pytest.raises(DataError, match=r"tasks.jsonl:2: not a Task record"):
        DreamGymTaskDataset(data_files=str(path))
