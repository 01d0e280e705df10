"""Offline data read from ``data.path`` (docs/offline-data.md)."""

from __future__ import annotations

import json

from dreamgym_core import stages
from dreamgym_core.config import DataConfig
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
