"""Data policies for offline collection (paper: expert demos plus oracle/random runs)."""

from __future__ import annotations

import random
from typing import Collection

from dreamgym_core.errors import ConfigError

__all__ = ["POLICIES", "EXPERT_POLICIES", "choose_action", "check_policy"]

POLICIES = ("expert", "random", "noisy", "explore")
EXPERT_POLICIES = frozenset({"expert", "noisy"})  # those that act on the expert's move
FALLBACK_ACTION = "look"


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ConfigError(f"unknown data policy {policy!r} (available: {', '.join(POLICIES)})")


def choose_action(
    policy: str, *, expert: str | None, admissible: list[str], rng: random.Random, noise: float, known: Collection[str] = ()
) -> str:
    """One action of ``policy``.

    expert: the engine's expert move; random: a uniform admissible action; noisy: the
    expert's move, replaced with probability ``noise`` by a uniform admissible action.
    When the expert has no move left, a random admissible action is taken.
    explore: a uniform action among ``known`` (every action the game has offered so far in
    the same ``collect()`` call: a pipeline's explore episodes are one call, ``dreamgym
    collect`` makes one call per episode) and the admissible ones, so often one this state
    does not offer (a wrong direction, taking what is not there): the engine's answer teaches
    an experience model what an invalid action does, which admissible-only data never shows it.
    """
    def uniform() -> str:
        return rng.choice(admissible) if admissible else FALLBACK_ACTION

    if policy == "explore":
        return rng.choice(sorted({*known, *admissible}) or [FALLBACK_ACTION])
    if policy == "random" or expert is None:
        return uniform()
    if policy == "noisy" and rng.random() < noise:
        return uniform()
    return expert
