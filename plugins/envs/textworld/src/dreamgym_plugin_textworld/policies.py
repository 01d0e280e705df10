"""Data policies for offline collection (paper: expert demos plus oracle/random runs)."""

from __future__ import annotations

import random

from dreamgym_core.errors import ConfigError

__all__ = ["POLICIES", "choose_action", "check_policy"]

POLICIES = ("expert", "random", "noisy")
FALLBACK_ACTION = "look"


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ConfigError(f"unknown data policy {policy!r} (available: {', '.join(POLICIES)})")


def choose_action(policy: str, *, expert: str | None, admissible: list[str], rng: random.Random, noise: float) -> str:
    """One action of ``policy``.

    expert: the engine's expert move; random: a uniform admissible action; noisy: the
    expert's move, replaced with probability ``noise`` by a uniform admissible action.
    When the expert has no move left, a random admissible action is taken.
    """
    def uniform() -> str:
        return rng.choice(admissible) if admissible else FALLBACK_ACTION

    if policy == "random" or expert is None:
        return uniform()
    if policy == "noisy" and rng.random() < noise:
        return uniform()
    return expert
