"""Offline data read from ``data.path`` (docs/offline-data.md)."""

from __future__ import annotations

import json
import re

import pytest

from dreamgym_core import stages
from dreamgym_core.config import DataConfig
from dreamgym_core.errors import DataError
from dreamgym_core.experience import training_examples
from dreamgym_core.records import Task

TASK = Task(id="t1", instruction="Find the coin and take it", domain="stand-in", split="train")


class _Domain:
    name = "stand-in"

    def tasks(self, split: str) -> list[Task]:
        return [TASK] if split == "train" else []


def test_a_row_without_an_instruction_takes_its_tasks_in_the_experience_models_prompts(tmp_path) -> None:
    """Only the episode got the task's instruction: the rows kept '', so every training prompt of
    the experience model read 'Task: ' with nothing after it."""
    rows = [
        {"task_id": "t1", "episode_id": "e0", "step": 0, "state": "Kitchen.", "action": "go east",
         "next_state": "Hall.", "reward": 0.0, "done": False},
        {"task_id": "t1", "episode_id": "e0", "step": 1, "state": "Hall.", "action": "take coin",
         "next_state": "You took the coin.", "reward": 1.0, "done": True, "success": True, "instruction": "its own words"},
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "run").mkdir()
    domain = _Domain()
    (episode,) = stages.collect_offline(domain, domain.tasks("train"), DataConfig(path=str(data)), seed=0, run_dir=tmp_path / "run")
    assert [t.instruction for t in episode.transitions] == [TASK.instruction, "its own words"]
    examples = training_examples(episode.transitions, None, history_window=2, k=0)
    assert f"Task: {TASK.instruction}\n" in examples[0][0][0]


def _episode_rows(steps: list[int]) -> list[dict]:
    """One episode of task t1 whose rows carry the step numbers ``steps``, in file order; won on the highest."""
    return [
        {"task_id": "t1", "episode_id": "e0", "step": step, "state": f"Room {step}.", "action": "go east",
         "next_state": f"Room {step + 1}.", "reward": float(step == max(steps)), "done": step == max(steps),
         "success": step == max(steps)}
        for step in steps
    ]


def _collect(tmp_path, steps: list[int]):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _episode_rows(steps)))
    (tmp_path / "run").mkdir()
    domain = _Domain()
    return data, lambda: stages.collect_offline(domain, domain.tasks("train"), DataConfig(path=str(data)), seed=0, run_dir=tmp_path / "run")


@pytest.mark.parametrize("steps, bad, at", [([1, 2, 3], 1, 0), ([0, 1, 3], 3, 2), ([2, 0, 1, 4], 4, 3)])
def test_an_episode_whose_steps_do_not_run_from_0_without_gaps_is_refused(tmp_path, steps, bad, at) -> None:
    """The experience model's prompts rebuild a step's history by its recorded step number, Early
    Experience's branches by its place in the episode: an episode numbered 1, 2, 3 (or with a gap)
    gave the experience model branch prompts with actions missing from their history."""
    data, collect = _collect(tmp_path, steps)
    with pytest.raises(DataError, match=(
        rf"^data.path {re.escape(str(data))}: episode 'e0' of task 't1' has step {bad} where step {at} belongs; "
        r"an episode's steps run 0, 1, 2, \.\.\. without gaps$"
    )):
        collect()
    assert not (tmp_path / "run" / stages.OFFLINE_FILE).exists()


def test_an_episode_whose_steps_are_out_of_file_order_is_put_in_step_order(tmp_path) -> None:
    _, collect = _collect(tmp_path, [1, 0, 2])
    (episode,) = collect()
    assert [t.step for t in episode.transitions] == [0, 1, 2]
