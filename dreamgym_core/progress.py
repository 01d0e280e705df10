"""Progress inside a long training epoch.

An epoch of a tiny model takes seconds, and its per-epoch line is progress enough. An epoch of
a pretrained one on a CPU takes many minutes (SmolLM2-135M's warm start: about 20 on 2 cores),
and a run that printed nothing that long looks hung. A trainer that reports each optimiser step
(``on_batch``) gets a line at most every ``every_s`` seconds, with the step, the epoch and the
loss of the steps since the last line; one whose epochs are short prints none.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

__all__ = ["StepProgress", "step_progress", "takes"]


class StepProgress:
    """``on_batch(epoch, step, steps, loss)`` that says "<what> epoch e/E: step s/S, loss x" once
    ``every_s`` seconds have passed since the training began or since its last line."""

    def __init__(self, say: Callable[[str], None], what: str, epochs: int, *, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.say, self.what, self.epochs, self.every_s, self.clock = say, what, epochs, every_s, clock
        self.last = clock()
        self.losses: list[float] = []

    def __call__(self, epoch: int, step: int, steps: int, loss: float) -> None:
        self.losses.append(loss)
        now = self.clock()
        if now - self.last < self.every_s:
            return
        mean = sum(self.losses) / len(self.losses)
        self.say(f"{self.what} epoch {epoch}/{self.epochs}: step {step}/{steps}, loss {mean:.4g}")
        self.last, self.losses = now, []


def takes(method: Any, name: str) -> bool:
    """Whether ``method`` accepts the keyword argument ``name``: a callback newer than a
    third-party backend is passed only to backends that take it."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): pass nothing new
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def step_progress(sft: Any, say: Callable[[str], None], what: str, epochs: int) -> dict[str, Any]:
    """The ``on_batch`` keyword argument for ``sft`` (a :class:`StepProgress`), or none where
    ``sft`` does not take it."""
    return {"on_batch": StepProgress(say, what, epochs)} if takes(sft, "on_batch") else {}
