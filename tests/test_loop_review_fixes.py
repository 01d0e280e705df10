"""Review fixes in the training loop: a curriculum's written tasks in the real environment
(Runner._select_tasks), and an evaluation on the split that picked the policy (stages.check_splits)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dreamgym_core import ComponentSpec, checkpoint, hookimpl
from dreamgym_core.config import Config, PipelineConfig, resolve
from dreamgym_core.errors import ConfigError
from dreamgym_core.loop import Runner, run_pipeline
from dreamgym_core.records import Task

from stand_ins import CountConfig, CountDomain, DiceLM, DiceLMConfig, StandIns, pipeline_dict

SYNTHETIC = {"experience_model": {"name": "dice-lm"}, "encoder": {"name": "hashing"}, "buffer": {"name": "exact"}}
PLAYED_AS_SEED = "rollout/tasks_played_as_seed"


def _resolved(plugins, run_dir: Path, parts: dict | None = None, **loop):
    pipeline = msgspec.convert(pipeline_dict(str(run_dir), **loop) | (parts or {}), type=PipelineConfig)
    return resolve(pipeline, plugins, where="inline.yaml")


def _rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")} for line in lines]


# --- a curriculum's written tasks in the real environment -------------------------------------


class CopyingConfig(Config):
    fresh_worlds: bool = False  # write tasks of a world no train task has (a payload of its own)


class CopyingCurriculum:
    """Writes tasks as reward-entropy does on a domain without make_variation: the observed
    task's world (payload) with a new instruction, here one whose target the world does not
    have. Half of each batch is written tasks once there are some. Records what it observes."""

    observed: list[tuple[int, Task, list[float]]] = []  # (draw, task, rewards)

    def __init__(self, config: CopyingConfig, *, tasks, seed=0, domain=None, **unused) -> None:
        self.config, self.seeds, self.domain = config, list(tasks), domain
        self.written: list[Task] = []
        self.draws = 0

    def next_tasks(self, *, n: int) -> list[Task]:
        self.draws += 1
        written = self.written[-(n // 2):] if n // 2 else []
        return written + [self.seeds[(self.draws + i) % len(self.seeds)] for i in range(n - len(written))]

    def observe(self, *, outcomes) -> None:
        for outcome in outcomes:
            type(self).observed.append((self.draws, outcome.task, list(outcome.rewards)))
            self.written.append(self._write(outcome.task))

    def _write(self, parent: Task) -> Task:
        target = int(parent.payload["target"]) % 5 + 1  # another goal than the world's
        text, number = f"count to {target}", len(self.written) + 1
        if hasattr(self.domain, "make_variation"):
            return msgspec.structs.replace(self.domain.make_variation(parent, text), id=f"{parent.id}~v{number}", origin="synthetic", parent_id=parent.id)
        payload = {"target": target, "seed": 1000 + number} if self.config.fresh_worlds else parent.payload
        return msgspec.structs.replace(parent, id=f"{parent.id}~syn{number}", instruction=text, payload=payload, origin="synthetic", parent_id=parent.id)

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "written": msgspec.to_builtins(self.written)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws, self.written = state["draws"], msgspec.convert(state["written"], list[Task])


class VaryingCountDomain(CountDomain):
    """The counting game with make_variation: a variation's world is the target its text names."""

    def make_variation(self, parent: Task, text: str) -> Task:
        target = int(re.search(r"count to (\d+)", text).group(1))
        return msgspec.structs.replace(parent, instruction=text, payload={**parent.payload, "target": target})


class CopyingPlugin:
    @hookimpl
    def dreamgym_register_curricula(self):
        return [ComponentSpec(name="copying", factory=CopyingCurriculum, config_type=CopyingConfig, description="(test double)")]

    @hookimpl
    def dreamgym_register_envs(self):
        return [ComponentSpec(name="count-varying", factory=VaryingCountDomain, config_type=CountConfig, description="(test double)")]


@pytest.fixture
def plugins(register_plugin):
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    register_plugin(StandIns(), "stand-ins")
    CopyingCurriculum.observed = []
    return register_plugin(CopyingPlugin(), "copying")


@pytest.fixture
def real_resets(monkeypatch) -> list[Task]:
    """The task of each episode RL played in the real environment, in order."""
    played: list[Task] = []
    rollout = Runner._rollout

    def recorded(self, tasks, phase, iteration):
        if phase == "real":
            played.extend(task for task in tasks for _ in range(self.cfg.loop.group_size))
        return rollout(self, tasks, phase, iteration)

    monkeypatch.setattr(Runner, "_rollout", recorded)
    return played


def _goal_told(task: Task) -> bool:
    """The instruction the policy is given is the goal the real environment scores."""
    return task.instruction == f"count to {task.payload['target']}"


def test_real_iterations_play_a_written_copy_of_a_world_as_its_seed_task(plugins, tmp_path, real_resets, capsys):
    # The copy was played as written: the env scored its world's target, the policy was told
    # another, and real RL rewarded disobeying the instruction.
    run_dir = tmp_path / "run"
    run_pipeline(_resolved(plugins, run_dir, {"curriculum": {"name": "copying"}}, iterations=3, tasks_per_iteration=4), plugins)
    assert real_resets and all(task.origin == "seed" and _goal_told(task) for task in real_resets)
    rows = [row for row in _rows(run_dir) if "charts/synthetic_phase" in row]  # the iterations'
    assert [row[PLAYED_AS_SEED] for row in rows] == [0.0, 2.0, 2.0]  # half of a batch once tasks are written
    # the curriculum observes the tasks the env played, each with its own group's rewards
    observed = CopyingCurriculum.observed
    assert all(task.origin == "seed" and len(rewards) == 2 for _, task, rewards in observed)
    assert Counter(task.id for _, task, _ in observed for _ in range(2)) == Counter(task.id for task in real_resets)
    assert capsys.readouterr().err.count("the curriculum's written tasks are played in the real environment as their seed task") == 1


def test_s2r_plays_written_tasks_synthetically_and_their_seed_task_for_real_and_resumes_alike(plugins, tmp_path, real_resets, monkeypatch):
    parts = SYNTHETIC | {"curriculum": {"name": "copying"}, "eval": {"episodes": 2}}
    loop = {"mode": "s2r", "iterations": 4, "s2r_synthetic_share": 0.5, "real_budget": 400, "tasks_per_iteration": 4, "checkpoint_every": 1}
    run_pipeline(_resolved(plugins, tmp_path / "whole", parts, **loop), plugins, progress=False)
    assert real_resets and all(task.origin == "seed" and _goal_told(task) for task in real_resets)
    synthetic = [task for draw, task, _ in CopyingCurriculum.observed if draw == 2]
    assert any(task.origin == "synthetic" for task in synthetic)  # the synthetic phase plays them as written
    whole = _rows(tmp_path / "whole")
    assert [row[PLAYED_AS_SEED] for row in whole if "charts/synthetic_phase" in row] == [0.0, 0.0, 2.0, 2.0]

    class Killed(Exception):
        pass

    save = checkpoint.save

    def killed_after_the_first_real_iteration(runner, iteration):
        if iteration == 3:
            raise Killed
        save(runner, iteration)

    monkeypatch.setattr(checkpoint, "save", killed_after_the_first_real_iteration)
    with pytest.raises(Killed):
        run_pipeline(_resolved(plugins, tmp_path / "killed", parts, **loop), plugins, progress=False)
    monkeypatch.setattr(checkpoint, "save", save)
    run_pipeline(_resolved(plugins, tmp_path / "killed", parts, **loop), plugins, resume=True, progress=False)
    assert _rows(tmp_path / "killed") == whole


def test_written_tasks_of_a_domain_with_make_variation_are_played_as_written(plugins, tmp_path, real_resets):
    parts = {"env": {"name": "count-varying"}, "curriculum": {"name": "copying"}}
    run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=3, tasks_per_iteration=4), plugins, progress=False)
    assert any(task.origin == "synthetic" for task in real_resets) and all(_goal_told(task) for task in real_resets)
    assert {row[PLAYED_AS_SEED] for row in _rows(tmp_path / "run") if "charts/synthetic_phase" in row} == {0.0}


def test_a_written_task_of_a_world_no_train_task_has_is_refused_in_one_line(plugins, tmp_path, real_resets):
    parts = {"curriculum": {"name": "copying", "config": {"fresh_worlds": True}}}
    with pytest.raises(ConfigError, match=(
        r"^inline.yaml: curriculum 'copying' .*gave task 'count-train-\d+~syn\d+' \(origin 'synthetic'\) to a real iteration "
        r"\(loop.mode 'real'\), and env 'count' has no make_variation to build its world nor a train task with its payload"
    )) as info:
        run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=3, tasks_per_iteration=4), plugins, progress=False)
    assert "\n" not in str(info.value)
    assert all(task.origin == "seed" for task in real_resets)


class VaryLM(DiceLM):
    """dice-lm that writes task variations as M_task: another target than the original's."""

    model_id = "vary-lm"

    def generate(self, *, prompts, **kw):
        out = []
        for prompt in prompts:
            if prompt.rstrip().endswith("New task:"):
                n = int(re.search(r"Original task: count to (\d+)", prompt).group(1))
                out.append(f"count to {5 if n != 5 else 4} and stop")
            elif prompt.rstrip().endswith("SELECTION:"):
                out.append(" 1\nREASONING: fine")
            else:
                out += super().generate(prompts=[prompt], **kw)
        return out


class VaryPlugin:
    @hookimpl
    def dreamgym_register_models(self):
        return [ComponentSpec(name="vary-lm", factory=VaryLM, config_type=DiceLMConfig, description="(test double)")]


def test_reward_entropy_s2r_real_iterations_play_the_instruction_the_env_scores(plugins, register_plugin, tmp_path, real_resets):
    # The reviewer's case: reward-entropy (generator: model) on a domain without make_variation.
    plugins = register_plugin(pytest.importorskip("dreamgym_plugin_reward_entropy"), "reward-entropy")
    plugins = register_plugin(VaryPlugin(), "vary")
    parts = SYNTHETIC | {"experience_model": {"name": "vary-lm"}, "curriculum": {"name": "reward-entropy"}, "eval": {"episodes": 0}}
    loop = {"mode": "s2r", "iterations": 6, "s2r_synthetic_share": 0.5, "real_budget": 200, "tasks_per_iteration": 6}
    run_pipeline(_resolved(plugins, tmp_path / "run", parts, **loop), plugins, progress=False)
    assert real_resets and all(task.origin == "seed" and task.payload["target"] == int(re.search(r"count to (\d+)", task.instruction).group(1))
                               for task in real_resets)
    assert sum(row.get(PLAYED_AS_SEED, 0.0) for row in _rows(tmp_path / "run")) > 0


# --- evaluating on the split that picked the policy ---------------------------------------------


class SharedSplitDomain(CountDomain):
    """The counting game whose 'test' tasks are its 'valid' tasks (their ids too)."""

    def tasks(self, *, split: str) -> list[Task]:
        return super().tasks(split="valid" if split == "test" else split)


class SharedSplitPlugin:
    @hookimpl
    def dreamgym_register_envs(self):
        return [ComponentSpec(name="count-shared", factory=SharedSplitDomain, config_type=CountConfig, description="(test double)")]


BEST_VALID = {"valid_every": 1, "valid_episodes": 4, "keep": "best-valid"}


@pytest.mark.parametrize(
    ("parts", "loop", "field"),
    [
        ({"eval": {"split": "valid", "episodes": 6, **BEST_VALID}}, {}, "eval.keep"),
        ({"eval": {"split": "valid", "episodes": 6}}, {"warmstart_epochs": 1, "warmstart_select_episodes": 2}, "loop.warmstart_select_episodes"),
    ],
)
def test_evaluating_on_the_valid_split_the_policy_was_picked_on_is_refused(plugins, tmp_path, parts, loop, field):
    parts = parts | {"policy": {"name": "scripted-saving"}}
    with pytest.raises(ConfigError, match=rf"^inline.yaml: eval.split is 'valid', and the policy is picked on it by {re.escape(field)}; "):
        run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=1, **loop), plugins, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_eval_split_sharing_tasks_with_the_valid_split_the_policy_was_picked_on_is_refused(plugins, register_plugin, tmp_path):
    plugins = register_plugin(SharedSplitPlugin(), "shared")
    parts = {"env": {"name": "count-shared"}, "policy": {"name": "scripted-saving"}, "eval": {"episodes": 6, **BEST_VALID}}
    with pytest.raises(ConfigError, match=(
        r"^inline.yaml: env 'count-shared': 6 of its 'test' tasks \(eval.split\) are 'valid' tasks too \(first: 'count-valid-0'\), "
        r"and the policy is picked on 'valid' by eval.keep; its evaluation would not be held out$"
    )):
        run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=1), plugins, progress=False)


@pytest.mark.parametrize(
    "eval_parts",
    [
        {"split": "valid", "valid_every": 1, "valid_episodes": 4},  # scored on it, but the last policy is kept
        {"split": "test", **BEST_VALID},
        {"split": "valid", "episodes": 0, **BEST_VALID},  # nothing evaluated
    ],
)
def test_validation_that_picks_no_evaluated_policy_is_still_accepted(plugins, tmp_path, eval_parts):
    parts = {"policy": {"name": "scripted-saving"}, "eval": {"episodes": 6} | eval_parts}
    run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=1), plugins, progress=False)
    assert (tmp_path / "run" / "summary.json").exists()
