"""Progress inside a long training epoch and a long rollout.

An epoch of a tiny model takes seconds, and its per-epoch line is progress enough. An epoch of
a pretrained one on a CPU takes many minutes (SmolLM2-135M's warm start: about 20 on 2 cores),
and a run that printed nothing that long looks hung. A trainer that reports each optimiser step
(``on_batch``) gets a line at most every ``every_s`` seconds, with the step, the epoch and the
loss of the steps since the last line; one whose epochs are short prints none.

Rollouts are the same: a tiny policy plays 32 evaluation games in seconds, SmolLM2 on a CPU
in minutes (an RL iteration's 16 episodes of 12 steps: about 3). A rollout reports each of its
lockstep steps (``on_step``), and a line comes at most every ``every_s`` seconds.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

__all__ = ["OnBatch", "RolloutProgress", "StepProgress", "step_progress", "takes"]

# on_batch(epoch, step, steps_per_epoch, loss): a trainer's report after each optimiser step.
OnBatch = Callable[[int, int, int, float], None]


class _Throttle:
    """True at most once ``every_s`` seconds after it was made or last said yes."""

    def __init__(self, every_s: float, clock: Callable[[], float]) -> None:
        self.every_s, self.clock = every_s, clock
        self.last = clock()

    def due(self) -> bool:
        now = self.clock()
        if now - self.last < self.every_s:
            return False
        self.last = now
        return True


class StepProgress:
    """``on_batch(epoch, step, steps, loss)`` that says "<what> epoch e/E: step s/S, loss x" once
    ``every_s`` seconds have passed since the training began or since its last line."""

    def __init__(self, say: Callable[[str], None], what: str, epochs: int | None, *, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.say, self.what, self.epochs = say, what, epochs
        self.throttle = _Throttle(every_s, clock)
        self.losses: list[float] = []

    def __call__(self, epoch: int, step: int, steps: int, loss: float) -> None:
        self.losses.append(loss)
        if not self.throttle.due():
            return
        mean = sum(self.losses) / len(self.losses)
        of = f"/{self.epochs}" if self.epochs is not None else ""  # an RL update's epochs are the algorithm's
        self.say(f"{self.what} epoch {epoch}{of}: step {step}/{steps}, loss {mean:.4g}")
        self.losses = []


class RolloutProgress:
    """``on_step(step, max_steps, playing, episodes)``, called as a rollout starts its lockstep
    step ``step`` (from 0), that says "<what>: step s/S, P of N episodes still playing" once
    ``every_s`` seconds have passed since the rollout began or since its last line."""

    def __init__(self, say: Callable[[str], None], what: str, *, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.say, self.what = say, what
        self.throttle = _Throttle(every_s, clock)

    def __call__(self, step: int, max_steps: int, playing: int, episodes: int) -> None:
        if self.throttle.due():
            self.say(f"{self.what}: step {step + 1}/{max_steps}, {playing} of {episodes} episodes still playing")


def takes(method: Any, name: str) -> bool:
    """Whether ``method`` accepts the keyword argument ``name``: a callback newer than a
    third-party backend is passed only to backends that take it."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): pass nothing new
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def step_progress(train: Any, say: Callable[[str], None], what: str, epochs: int | None) -> dict[str, Any]:
    """The ``on_batch`` keyword argument for ``train`` (an ``sft`` or an algorithm's ``update``:
    a :class:`StepProgress`), or none where ``train`` does not take it."""
    return {"on_batch": StepProgress(say, what, epochs)} if takes(train, "on_batch") else {}
