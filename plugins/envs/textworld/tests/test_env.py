"""The env adapter on a scripted engine: what reaches the engine and what comes back."""

from __future__ import annotations

from typing import Any

import pytest

from dreamgym_core.errors import ConfigError
from dreamgym_core.records import Task
from dreamgym_plugin_textworld import TextWorldEnv
from dreamgym_plugin_textworld.engines import RawState
from dreamgym_plugin_textworld.env import EpisodeOver

START = RawState("You are in a cellar.", "nothing", ["look", "take coin"], 0.0, False, False, "Find the coin.")


class ScriptedEngine:
    """Answers every action with the start state; records what it was sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def load(self, payload: dict[str, Any]) -> None:
        pass

    def reset(self) -> RawState:
        return START

    def step(self, action: str) -> RawState:
        self.sent.append(action)
        return START._replace(text=f"You {action}.")

    def refusal(self, action: str) -> str | None:
        return None

    def expert_action(self) -> str | None:
        return None

    def close(self) -> None:
        pass


TASK = Task(id="t", instruction="Find the coin.", domain="tw", split="train", origin="seed", payload={})


def _env() -> tuple[TextWorldEnv, ScriptedEngine]:
    engine = ScriptedEngine()
    env = TextWorldEnv(engine, max_steps=5, max_observation_chars=600, max_action_chars=300)
    env.reset(task=TASK)
    return env, engine


@pytest.mark.parametrize(
    ("action", "what"),
    [
        ("take coin\x00", "control character U+0000"),
        ("\x1b[0mlook", "control character U+001B"),
        ("look\x7f", "control character U+007F"),
        ("take \ud800coin", "lone surrogate U+D800"),
    ],
)
def test_unreadable_actions_never_reach_the_engine(action: str, what: str) -> None:
    # The tw interpreter crashes the whole process on a NUL; a surrogate cannot be sent to twx.
    env, engine = _env()
    result = env.step(action=action)
    assert engine.sent == []
    assert not result.valid and not result.done and result.reward == 0.0
    assert f"holds the {what})" in result.observation.text.splitlines()[0]
    assert result.observation.admissible_actions == START.admissible
    assert result.info["steps"] == 1 and result.info["score_delta"] == 0.0
    assert env.step(action="take coin").valid and engine.sent == ["take coin"]  # the episode goes on


@pytest.mark.parametrize("action", ["take coin", "look\naround", "examine café ☃", "x" * 5000])
def test_other_actions_reach_the_engine_unchanged(action: str) -> None:
    # What the engines were always sent, they are still sent as is (whitespace included).
    env, engine = _env()
    env.step(action=action)
    assert engine.sent == [action]


@pytest.mark.parametrize(("action", "listed"), [("  LOOK ", "look"), ("take\tcoin", "take coin"), ("Take  Coin", "take coin")])
def test_a_listed_action_in_another_case_or_spacing_is_sent_as_listed(action: str, listed: str) -> None:
    # TextWorldExpress answers "Unknown action" to anything but the listed text, while the step
    # counted as valid: the action the policy named is the one carried out.
    env, engine = _env()
    assert env.step(action=action).valid
    assert engine.sent == [listed]


def test_a_failed_reset_leaves_no_episode_to_step_in() -> None:
    # The old episode played on after a reset that failed, counting on from its steps.
    env, engine = _env()
    env.step(action="look")

    def refuse(payload: dict[str, Any]) -> None:
        raise ConfigError("env 'tw': no such game")

    engine.load = refuse  # type: ignore[method-assign]
    with pytest.raises(ConfigError):
        env.reset(task=TASK)
    with pytest.raises(EpisodeOver, match=r"needs reset\(\) first"):
        env.step(action="look")
    assert engine.sent == ["look"]
