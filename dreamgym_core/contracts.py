"""What the core checks of a plugin's component when it builds one and when it calls one.

A component that breaks its contract at run time (an ``update`` that returns None, an ``act``
that drops a prompt, a ``save`` that writes nothing, a NaN loss) is stopped here with one line
naming it and its plugin, at the call that broke it. Left alone, it failed later as a
traceback in core code, or not at all: a run that exited 0 after training on nothing.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

from .errors import DreamGymError
from .records import Transition

__all__ = ["ComponentError", "WrongReturn", "REQUIRED_MEMBERS", "missing_members", "checked_metrics", "checked_texts", "checked_retrieval", "checked_saved", "checked_action"]


class ComponentError(DreamGymError):
    """A component broke its contract (a missing method, a wrong return value)."""


class WrongReturn(ComponentError):
    """A component returned a value of the wrong kind: a bug in the plugin, so the run's failure
    even inside a rollout, where what a component raises fails only its own episode."""


# The members every component of a kind must have (protocols.py; optional members are not here).
REQUIRED_MEMBERS: dict[str, tuple[str, ...]] = {
    "env": ("tasks", "make_env", "collect", "annotate"),
    "model": ("generate",),
    "encoder": ("encode",),
    "buffer": ("add", "retrieve", "sample", "__len__", "flush", "close"),
    "curriculum": ("next_tasks", "observe", "state_dict", "load_state_dict"),
    "algo": ("act", "update", "save", "load"),
    "logger": ("log", "close"),
}


def missing_members(kind: str, component: Any) -> list[str]:
    """The required members of ``kind`` that ``component`` lacks (not callable counts as lacking)."""
    return [name for name in REQUIRED_MEMBERS.get(kind, ()) if not callable(getattr(component, name, None))]


#: The key of a metrics row that holds its iteration (metrics.jsonl, the loggers, checkpoints' history)
RESERVED_METRIC = "step"


def checked_metrics(value: Any, who: str, call: str) -> dict[str, float]:
    """``value`` as a dict of floats by str name, as every metrics sink and report reads them;
    a value that is not a real number is a :class:`ComponentError` naming ``who`` and ``call``.

    A non-finite loss (a key with ``loss`` in it) is refused: the update or fine-tuning that gave
    it has diverged, and the weights it left would fail the next generation deep inside the model
    code. Other non-finite metrics (a 0/0 diagnostic) are dropped and counted under
    ``errors/nonfinite_metrics``, as the built-in trainers count theirs."""
    if not isinstance(value, dict):
        raise ComponentError(f"{who}: {call} returned {type(value).__name__}, expected a dict of metrics (str: number)")
    metrics: dict[str, float] = {}
    dropped = 0
    for key, number in value.items():
        if not isinstance(key, str) or not isinstance(number, numbers.Real):
            raise ComponentError(f"{who}: {call} returned metric {key!r} = {number!r:.60}, expected a number by str name")
        if key == RESERVED_METRIC:  # it would replace the iteration number of its metrics row (and resume's rewind)
            raise ComponentError(f"{who}: {call} returned a metric named {key!r}, which names the iteration of every "
                                 "metrics row; give it another name (say 'algo/step')")
        if math.isfinite(number):
            metrics[key] = float(number)
        elif "loss" in key:
            raise ComponentError(f"{who}: {call} returned metric {key!r} = {float(number)}: training diverged (a non-finite loss)")
        else:
            dropped += 1
    if dropped:
        metrics["errors/nonfinite_metrics"] = metrics.get("errors/nonfinite_metrics", 0.0) + dropped
    return metrics


def checked_texts(value: Any, n: int, who: str, call: str) -> list[str]:
    """``value`` if it is a list of ``n`` str (one per prompt); else a :class:`ComponentError`.
    A shorter list used to be zipped with the prompts, dropping episodes without a word."""
    if not isinstance(value, list):
        raise ComponentError(f"{who}: {call} returned {type(value).__name__}, expected a list of {n} str (one per prompt)")
    if len(value) != n:
        raise ComponentError(f"{who}: {call} returned {len(value)} texts for {n} prompts, expected one per prompt")
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise ComponentError(f"{who}: {call} returned {type(text).__name__} at position {i}, expected str")
    return value


def checked_retrieval(value: Any, n: int, who: str) -> list[list[Any]]:
    """``value`` if it is a list of ``n`` lists of Transitions (one per query); else a
    :class:`WrongReturn` (a plugin bug: the run's failure, even in a rollout). A shorter list
    was zipped with the queries: the steps past its end got no demos without a word (None
    failed as a bare TypeError)."""
    if not isinstance(value, list) or len(value) != n:
        got = f"{len(value)} lists" if isinstance(value, list) else type(value).__name__
        raise WrongReturn(f"{who}: retrieve() returned {got} for {n} queries, expected a list of demos per query")
    for i, demos in enumerate(value):
        if not isinstance(demos, list) or not all(isinstance(d, Transition) for d in demos):
            raise WrongReturn(f"{who}: retrieve() returned {type(demos).__name__} at position {i}, expected a list of Transition")
    return value


def checked_saved(path: str | Path, who: str, call: str) -> None:
    """A :class:`ComponentError` unless ``save`` wrote something at ``path``: a checkpoint
    without it looks finished, and ``--resume`` or ``dreamgym eval`` cannot use it."""
    if not Path(path).exists():
        raise ComponentError(f"{who}: {call} wrote nothing at {path}")


def checked_action(action: Any, who: str) -> str:
    """``action`` if it is a str; else a TypeError naming ``who``, raised before the env moves.
    The core only ever sends str (``act`` is checked); this is for Python callers, whose int or
    None used to fail inside an engine (an AttributeError, or an alfworld episode ended)."""
    if not isinstance(action, str):
        raise TypeError(f"{who}: step(action=...) takes a str, got {type(action).__name__}")
    return action
