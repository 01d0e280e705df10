"""DreamGym uniform curriculum: seed tasks drawn uniformly (the no-task-generation ablation)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from dreamgym_core import hookimpl
from dreamgym_core.config import Config
from dreamgym_core.errors import ConfigError, DataError
from dreamgym_core.records import Task, TaskOutcome
from dreamgym_core.specs import ComponentSpec

__all__ = ["UniformConfig", "UniformCurriculum", "dreamgym_register_curricula"]


class UniformConfig(Config):
    """No settings: every seed task is equally likely, nothing is generated."""


class UniformCurriculum:
    """Draws seed tasks uniformly (without replacement while the pool allows, then each task as evenly
    as n allows); observe() only records."""

    def __init__(self, config: UniformConfig, *, tasks: Sequence[Task], seed: int = 0) -> None:
        if not tasks:
            raise ConfigError("curriculum 'uniform' (plugin uniform): no seed tasks to draw from")
        self.config, self.tasks, self.seed = config, list(tasks), seed
        self.draws = 0
        self.observed_tasks = 0
        self.mean_reward = 0.0

    def next_tasks(self, *, n: int) -> list[Task]:
        # Keyed as reward-entropy's batches are (its stream_key(SAMPLING_STREAM, draws, seed)), so
        # reward-entropy with lambda 0 and uniform seed tasks draws these tasks, in another order,
        # while n <= the pool (the same rng.choice call). A larger batch is not the same: both give
        # every task floor(n/pool) or ceil(n/pool) times, but by other rng calls, so which tasks
        # come once more differs. Neither draw is changed to match: committed runs replay them.
        rng = np.random.default_rng([1, self.draws, self.seed])
        self.draws += 1
        size = len(self.tasks)
        if n <= size:
            index = rng.choice(size, size=n, replace=False)
        else:
            # whole shuffles of the pool, then a cut: every task floor(n/size) or ceil(n/size) times.
            # Drawn with replacement, one slot past the pool left tasks out of the batch (of 6 tasks
            # and n=7, 2.3 on average) while others came 3 or 4 times.
            index = np.concatenate([rng.permutation(size) for _ in range(-(-n // size))])[:n]
        return [self.tasks[i] for i in index]

    def observe(self, *, outcomes: Sequence[TaskOutcome]) -> None:
        # Non-finite rewards are left out, as reward-entropy's task_value does: a NaN mean is
        # written as JSON null in the checkpoint, which the resume could not read back.
        rewards = [r for o in outcomes for r in o.rewards if math.isfinite(r)]
        self.observed_tasks += len(outcomes)
        self.mean_reward = float(np.mean(rewards)) if rewards else 0.0

    def metrics(self) -> dict[str, float]:
        return {"curriculum/observed_tasks": float(self.observed_tasks), "curriculum/mean_reward": self.mean_reward,
                "curriculum/synthetic_tasks": 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "observed_tasks": self.observed_tasks, "mean_reward": self.mean_reward}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            # Checked before any is set, as reward-entropy's state is: int() cut a fractional count
            # (2.7 draws resumed as 2, replaying other tasks) and float() read "nan" as a mean.
            draws, observed = _count(state["draws"], "draws"), _count(state["observed_tasks"], "observed_tasks")
            mean_reward = float(state["mean_reward"])
            if not math.isfinite(mean_reward):
                raise ValueError(f"mean_reward must be finite, got {state['mean_reward']!r}")
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"curriculum 'uniform': malformed state: {err!r}") from err
        self.draws, self.observed_tasks, self.mean_reward = draws, observed, mean_reward


def _count(value: Any, what: str) -> int:
    """A saved counter as an int >= 0 (ValueError otherwise; a negative draw count failed in the
    next next_tasks() as a traceback)."""
    count = int(value)
    if count < 0 or count != value:
        raise ValueError(f"{what} must be a whole number >= 0, got {value!r}")
    return count


def _build(config: UniformConfig, *, tasks, seed: int = 0, **_):
    """Factory; task_generator, encoder and domain are accepted and unused."""
    return UniformCurriculum(config, tasks=tasks, seed=seed)


@hookimpl
def dreamgym_register_curricula() -> list[ComponentSpec]:
    return [ComponentSpec(name="uniform", factory=_build, config_type=UniformConfig,
                          description="Seed tasks sampled uniformly; no task generation (ablation).")]
