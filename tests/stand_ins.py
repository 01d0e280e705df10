"""Stand-in components for core tests of the plugin host and the loop's control flow.

These are test doubles, not product code: a counting game with a known optimum, a
scripted policy and a recording algorithm. They let the core's tests exercise hook
order, config resolution and checkpoints without the real environment and model
plugins (which have their own tests on the real engines and real models).
"""

from __future__ import annotations

import random
import re
from typing import Any, Sequence

from dreamgym_core import ComponentSpec, hookimpl
from dreamgym_core.config import Config
from dreamgym_core.records import Observation, StepResult, Task, Trajectory, Transition
from dreamgym_core.rollout import play_offline


class CountConfig(Config):
    targets: int = 6
    max_value: int = 5


class CountEnv:
    """Reach the target number with 'inc' actions, then 'stop'."""

    def __init__(self, max_value: int) -> None:
        self.max_value = max_value
        self.value = 0
        self.target = 0
        self.closed = False

    def _obs(self) -> Observation:
        return Observation(text=f"count is {self.value}", admissible_actions=["inc", "stop"])

    def reset(self, *, task: Task, seed: int | None = None) -> Observation:
        self.value, self.target = 0, int(task.payload["target"])
        return self._obs()

    def step(self, *, action: str) -> StepResult:
        if action == "explode":
            raise RuntimeError("engine crashed")
        if action == "inc":
            self.value = min(self.value + 1, self.max_value)
            return StepResult(observation=self._obs(), reward=0.0, done=False)
        if action == "stop":
            won = self.value == self.target
            return StepResult(observation=self._obs(), reward=float(won), done=True, success=won)
        return StepResult(observation=self._obs(), reward=0.0, done=False, valid=False)

    def close(self) -> None:
        self.closed = True


class CountDomain:
    name = "count"

    def __init__(self, config: CountConfig) -> None:
        self.config = config

    def tasks(self, *, split: str) -> list[Task]:
        offset = {"train": 0, "valid": 100, "test": 200}[split]
        return [
            Task(id=f"count-{split}-{i}", instruction=f"count to {i % self.config.max_value + 1}", domain="count",
                 split=split, payload={"target": i % self.config.max_value + 1, "seed": offset + i})
            for i in range(self.config.targets)
        ]

    def make_env(self) -> CountEnv:
        return CountEnv(self.config.max_value)

    def initial_observation(self, task: Task) -> Observation:
        """Where a synthetic episode starts: the real reset."""
        return self.make_env().reset(task=task)

    def collect(self, *, tasks: Sequence[Task], policy: str, episodes: int, seed: int) -> list[Trajectory]:
        out = []
        for e in range(episodes):
            task = tasks[e % len(tasks)]
            actions = iter(["inc"] * int(task.payload["target"]) + ["stop"])
            out.append(play_offline(self.make_env(), task, f"{policy}-{e}", lambda obs: next(actions)))
        return out

    def annotate(self, *, transition: Transition) -> str:
        return f"{transition.action} moves from '{transition.state}' to '{transition.next_state}'"


class ScriptConfig(Config):
    mistakes: float = 0.0


class ScriptedPolicy:
    """Reads the target from the prompt and counts to it; errs with probability ``mistakes``."""

    model_id = "scripted"

    def __init__(self, config: ScriptConfig) -> None:
        self.config = config
        self.rng = random.Random(0)

    def generate(self, *, prompts: Sequence[str], max_new_tokens: int = 32, temperature: float = 1.0, stop: Sequence[str] = (), seed: int | None = None) -> list[str]:
        out = []
        for prompt in prompts:
            target, values = re.search(r"count to (\d+)", prompt), re.findall(r"count is (\d+)", prompt)
            if target is None or not values:  # not a counting prompt: nothing to say
                out.append("")
                continue
            value = int(values[-1])
            action = "inc" if value < int(target.group(1)) else "stop"
            if self.rng.random() < self.config.mistakes:
                action = "stop"
            text = f"<think>at {value}</think><action>{action}</action>"
            out.append(text[: min((text.index(s) for s in stop if s and s in text), default=len(text))])
        return out


class SavingScriptedPolicy(ScriptedPolicy):
    """The scripted policy with weights to snapshot: its random state, and which snapshot it
    last reloaded (``reloaded``), so tests can see which policy an evaluation played."""

    def __init__(self, config: ScriptConfig) -> None:
        super().__init__(config)
        self.reloaded: str | None = None

    def sft(self, *, examples: Sequence[Any], epochs: int, **_: Any) -> dict[str, float]:
        # nothing to learn; the loss names what it saw, so a report can show where it came from
        return {"losses/sft_loss": float(len(examples) * epochs)}

    def save(self, *, path: str) -> None:
        import json, os

        os.makedirs(path, exist_ok=True)
        with open(f"{path}/weights.json", "w") as f:
            json.dump({"rng": list(self.rng.getstate()[1]), "saved_as": os.path.basename(path)}, f)

    def reload(self, *, path: str) -> None:
        import json

        with open(f"{path}/weights.json") as f:
            state = json.load(f)
        self.rng.setstate((3, tuple(state["rng"]), None))
        self.reloaded = path


class DiceLMConfig(Config):
    pass


class DiceLM:
    """An experience-model backend for the counting game: moves the count as the action says
    and, on 'stop', throws a die seeded by the call's seed for success, so which draw a run
    makes shows in its synthetic transitions."""

    model_id = "dice-lm"

    def __init__(self, config: DiceLMConfig) -> None:
        self.config = config

    def sft(self, *, examples: Sequence[Any], epochs: int, lr: float, batch_size: int, **_: Any) -> dict[str, float]:
        return {"losses/sft_loss": 0.0}  # nothing to learn: its answers are rules and dice

    def save(self, *, path: str) -> None:
        import os

        os.makedirs(path, exist_ok=True)

    def reload(self, *, path: str) -> None:
        pass

    def generate(self, *, prompts: Sequence[str], max_new_tokens: int = 32, temperature: float = 1.0, stop: Sequence[str] = (), seed: int | None = None) -> list[str]:
        rng = random.Random(seed)
        out = []
        for prompt in prompts:
            value = int(re.findall(r"count is (\d+)", prompt)[-1])
            stop_now = re.findall(r"Action: (\w+)", prompt)[-1] == "stop"
            success = stop_now and rng.random() < 0.5
            state = f"count is {value if stop_now else value + 1}"
            out.append(f"<think>die</think><state>{state}</state><valid>true</valid> <done>{str(stop_now).lower()}</done> "
                       f"<success>{str(success).lower()}</success> <reward>{int(success)}</reward>")
        return out


class RecordConfig(Config):
    lr: float = 0.1


class RecordingAlgo:
    """Counts updates; its 'parameter' is the mean reward seen, so state round-trips."""

    def __init__(self, config: RecordConfig, *, policy: Any, seed: int) -> None:
        self.policy, self.updates, self.param = policy, 0, 0.0

    def act(self, *, prompts: Sequence[str], greedy: bool = False, temperature: float | None = None, evaluation: bool = False) -> list[str]:
        return self.policy.generate(prompts=list(prompts), max_new_tokens=32)

    def update(self, *, groups: Sequence[Sequence[Trajectory]]) -> dict[str, float]:
        rewards = [t.outcome_reward for g in groups for t in g]
        self.updates += 1
        self.param += sum(rewards) / max(len(rewards), 1)
        # what the update was given: its episodes, and those ended by a step the env could not answer
        unanswered = sum(bool(t.transitions) and t.transitions[-1].model_failed for g in groups for t in g)
        return {"losses/policy_loss": -self.param, "charts/mean_reward": sum(rewards) / max(len(rewards), 1),
                "data/episodes": float(len(rewards)), "data/unanswered_episodes": float(unanswered)}

    def save(self, *, path: str) -> None:
        import json, os

        os.makedirs(path, exist_ok=True)
        with open(f"{path}/state.json", "w") as f:
            json.dump({"updates": self.updates, "param": self.param, "rng": list(self.policy.rng.getstate()[1])}, f)

    def load(self, *, path: str) -> None:
        import json

        with open(f"{path}/state.json") as f:
            state = json.load(f)
        self.updates, self.param = state["updates"], state["param"]
        self.policy.rng.setstate((3, tuple(state["rng"]), None))


class StandIns:
    """A plugin object registering the stand-ins (used via the register_plugin fixture)."""

    @hookimpl
    def dreamgym_register_envs(self) -> list[ComponentSpec]:
        return [ComponentSpec(name="count", factory=CountDomain, config_type=CountConfig, description="Counting game (test double).")]

    @hookimpl
    def dreamgym_register_models(self) -> list[ComponentSpec]:
        return [
            ComponentSpec(name="scripted", factory=ScriptedPolicy, config_type=ScriptConfig, description="Scripted policy (test double)."),
            ComponentSpec(name="scripted-saving", factory=SavingScriptedPolicy, config_type=ScriptConfig, description="Scripted policy that saves (test double)."),
            ComponentSpec(name="dice-lm", factory=DiceLM, config_type=DiceLMConfig, description="Seeded experience-model answers (test double)."),
        ]

    @hookimpl
    def dreamgym_register_algos(self) -> list[ComponentSpec]:
        return [ComponentSpec(name="record", factory=RecordingAlgo, config_type=RecordConfig, description="Recording algorithm (test double).")]


def pipeline_dict(run_dir: str, **loop: Any) -> dict[str, Any]:
    return {
        "plugins": [],
        "env": {"name": "count"},
        "policy": {"name": "scripted", "config": {"mistakes": 0.3}},
        "algo": {"name": "record"},
        "data": {"expert_episodes": 4, "noisy_episodes": 0, "random_episodes": 0},
        "loop": {"mode": "real", "iterations": 4, "tasks_per_iteration": 3, "group_size": 2, "max_steps": 8, "warmstart_epochs": 0, **loop},
        "eval": {"episodes": 6},
        "run_dir": run_dir,
    }
