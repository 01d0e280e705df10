"""Rule-based annotation and data-policy choice (pure functions)."""

from __future__ import annotations

import random

import pytest

from dreamgym_core.errors import ConfigError
from dreamgym_core.records import Transition
from dreamgym_plugin_textworld.annotate import annotate_transition, exit_sentence
from dreamgym_plugin_textworld.policies import check_policy, choose_action
from dreamgym_plugin_textworld.state import render_state

BEFORE = render_state("You are in the kitchen. You see a coin.", "You are carrying nothing.", ["take coin", "look"], 0.0)
AFTER = render_state("You pick up the coin.", "You are carrying: a coin.", ["drop coin", "look"], 1.0)


def _transition(**kw) -> Transition:
    base = dict(task_id="t", episode_id="e", step=0, state=BEFORE, action="take coin", next_state=AFTER, reward=1.0, done=True, success=True)
    return Transition(**{**base, **kw})


def test_success_trace_names_changes_score_and_reward() -> None:
    trace = annotate_transition(_transition())
    assert "admissible" in trace and "from nothing to a coin" in trace
    assert "rises from 0.00 to 1.00" in trace and "reward 1" in trace


def test_invalid_action_trace() -> None:
    trace = annotate_transition(
        _transition(action="dance", valid=False, next_state=BEFORE, reward=0.0, done=False, success=False)
    )
    assert "'dance' is not an admissible action" in trace
    assert "stays nothing" in trace and "stays at 0.00" in trace and "continues" in trace


def test_failed_end_trace() -> None:
    assert "without success" in annotate_transition(_transition(reward=0.0, success=False, next_state=BEFORE))


def test_a_step_cap_ending_is_annotated_as_the_game_going_on() -> None:
    """The experience model is trained on done=false at a step-cap ending (``game_over``); its trace
    said "the episode ends", the opposite of the answer it preceded."""
    cut = _transition(action="look", next_state=BEFORE, reward=0.0, success=False, truncated=True)
    assert cut.done and not cut.game_over
    trace = annotate_transition(cut)
    assert trace.endswith("the episode continues with reward 0.") and "ends" not in trace


ROOM = render_state("You are in the parlor. You see a shoe. To the East you see the chamber. To the North you see the attic.",
                    "Inventory: a map", ["move east", "move north", "look around"], 0.0)  # fmt: skip
CHAMBER = render_state("You are in the chamber. To the West you see the parlor.", "Inventory: a map", ["move west"], 0.0)


def test_a_grounded_move_quotes_what_the_state_says_lies_that_way() -> None:
    move = _transition(state=ROOM, action="move east", next_state=CHAMBER, reward=0.0, done=False, success=False)
    assert exit_sentence(ROOM, "move east") == "To the East you see the chamber."
    assert exit_sentence(ROOM, "go north") == "To the North you see the attic."
    trace = annotate_transition(move, grounded_moves=True)
    assert "The state says of that way: To the East you see the chamber. The game responds: You are in the chamber." in trace
    assert "The state says" not in annotate_transition(move)  # off by default
    # no sentence about that way, not a move, or a move the game refused: the trace is as without it
    for state, action, valid in ((ROOM, "move south", True), (ROOM, "look around", True), (BEFORE, "move east", True), (ROOM, "move east", False)):
        t = _transition(state=state, action=action, valid=valid, next_state=CHAMBER, reward=0.0, done=False, success=False)
        assert annotate_transition(t, grounded_moves=True) == annotate_transition(t)


def test_policies() -> None:
    rng = random.Random(0)
    assert choose_action("expert", expert="go north", admissible=["a", "b"], rng=rng, noise=0.3) == "go north"
    assert choose_action("expert", expert=None, admissible=["a"], rng=rng, noise=0.3) == "a"
    assert choose_action("random", expert="go north", admissible=["a", "b"], rng=rng, noise=0.3) in ("a", "b")
    noisy = [choose_action("noisy", expert="x", admissible=["a"], rng=rng, noise=0.5) for _ in range(400)]
    assert 120 < noisy.count("a") < 280
    assert choose_action("noisy", expert="x", admissible=["a"], rng=rng, noise=0.0) == "x"
    explored = {choose_action("explore", expert="x", admissible=["a"], rng=rng, noise=0.0, known=["a", "b", "c"]) for _ in range(60)}
    assert explored == {"a", "b", "c"}  # actions the state does not list too, never the expert's
    with pytest.raises(ConfigError, match="available: expert, random, noisy, explore"):
        check_policy("oracle")
