"""loop.warmstart_demos: which offline episodes the warm start imitates."""

from __future__ import annotations

import json

import msgspec
import pytest

from dreamgym_core import checkpoint
from dreamgym_core.config import PipelineConfig, resolve
from dreamgym_core.errors import DataError
from dreamgym_core.loop import run_pipeline
from dreamgym_core.records import Task, Trajectory, Transition
from dreamgym_core.stages import OFFLINE_FILE, warmstart_demos
from stand_ins import StandIns, pipeline_dict


def _episode(name: str, policy: str, won: bool) -> Trajectory:
    task = Task(id=f"t/{name}", instruction="count", domain="count")
    step = Transition(task_id=task.id, episode_id=f"{task.id}/e", step=0, state="0", action="add", next_state="1",
                      reward=float(won), done=True, success=won)  # fmt: skip
    return Trajectory(task=task, transitions=[step], data_policy=policy)


def test_expert_demos_are_the_experts_wins_and_winners_every_win() -> None:
    offline = [_episode("a", "expert", True), _episode("b", "expert", False), _episode("c", "noisy", True), _episode("d", "random", True)]
    assert [t.task.id for t in warmstart_demos(offline, "winners")] == ["t/a", "t/c", "t/d"]
    assert [t.task.id for t in warmstart_demos(offline, "expert")] == ["t/a"]


def test_expert_demos_from_episodes_that_record_no_data_policy_are_refused() -> None:
    unsaid = [msgspec.structs.replace(_episode("a", "", True), data_policy="")]
    assert warmstart_demos(unsaid, "winners") == unsaid
    with pytest.raises(DataError, match=r"^run/offline.jsonl: its episodes record no data policy, so loop.warmstart_demos='expert'"):
        warmstart_demos(unsaid, "expert", where="run/offline.jsonl")


def _run(plugins, run_dir, demos: str) -> tuple[float, list[Trajectory]]:
    """The stand-in run's warm-start loss (its policy's loss counts the examples) and offline data."""
    parts = pipeline_dict(str(run_dir), iterations=0, warmstart_epochs=1, warmstart_demos=demos)
    parts["data"] = {"expert_episodes": 6, "noisy_episodes": 6, "random_episodes": 6}
    parts["policy"] = {"name": "scripted-saving", "config": {"mistakes": 0.3}}
    run_pipeline(resolve(msgspec.convert(parts, type=PipelineConfig), plugins, where="inline.yaml"), plugins)
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    return first["warmstart/sft_loss"], checkpoint.read_trajectories(run_dir / OFFLINE_FILE)


def test_a_run_records_each_offline_episodes_data_policy_and_imitates_the_chosen_demos(register_plugin, tmp_path) -> None:
    plugins = register_plugin(StandIns(), "stand-ins")
    everything, offline = _run(plugins, tmp_path / "winners", "winners")
    assert [t.data_policy for t in offline] == ["expert"] * 6 + ["noisy"] * 6 + ["random"] * 6
    wins = {policy: sum(len(t.transitions) for t in offline if t.success and t.data_policy == policy) for policy in ("expert", "noisy", "random")}
    assert wins["expert"] and wins["noisy"] + wins["random"]  # the noisy or random policy won some: a choice to make
    assert everything == sum(wins.values())
    expert_only, _ = _run(plugins, tmp_path / "expert", "expert")
    assert expert_only == wins["expert"]
