"""Fixes from a review of the tw engine, the annotator and collection, each on the real engine.

One coin_collector game, generated once into this module's own cache (the shared fixture
generates every tw game, cooking's slowly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Iterator

import pytest

from dreamgym_core.rollout import step_transition
from dreamgym_plugin_textworld import make_tw
from dreamgym_plugin_textworld.engines import TwEngine, interpreter_command
from dreamgym_plugin_textworld.env import TextWorldEnv

from .conftest import tw_config


@pytest.fixture(scope="module")
def coin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    domain = make_tw(tw_config("coin_collector", str(tmp_path_factory.mktemp("tw-games")), max_steps=12))
    domain.tasks(split="train")  # generates the game
    yield domain
    domain.close()


def record_sends(env: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The actions ``env`` sends to its engine from now on."""
    sent: list[str] = []
    step = env.engine.step
    monkeypatch.setattr(env.engine, "step", lambda a: sent.append(a) or step(a))
    return sent


# --- 1. a backslash reaches dumb-frotz's own command reader -------------------------------


@pytest.mark.parametrize("action", ["\\help", "\\u", "\\boxed{1}", "go \\west"])
def test_an_action_holding_a_backslash_is_refused(action: str) -> None:
    refusal = TwEngine(cache_dir="unused").refusal(action)
    assert refusal is not None and refusal.startswith("Not sent: ")


# The step runs in a child process: before the fix it never returned (with stdin at its end,
# dumb-frotz printed its prompt in a loop: gigabytes, here thrown away).
_BACKSLASH_CHILD = r"""
import json, sys, msgspec
from dreamgym_plugin_textworld import TwConfig, make_tw
config, out = sys.argv[1:]
domain = make_tw(msgspec.convert(json.loads(config), type=TwConfig))
env = domain.make_env()
start = env.reset(task=domain.tasks(split="train")[0])
answers = [env.step(action=a) for a in ("\\help", "\\u", "\\boxed{1}")]
after = env.step(action="look").observation
env.close(); domain.close()
with open(out, "w") as f:
    json.dump({"valid": [r.valid for r in answers], "first_lines": [r.observation.text.splitlines()[0] for r in answers],
               "look_is_start": after == start}, f)
"""


def test_a_backslash_action_steps_without_hanging(coin, tmp_path) -> None:
    import msgspec

    out = tmp_path / "result.json"
    # the child imports the plugin from where this process does (an old copy, to show the bug)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    config = msgspec.json.encode(coin.config).decode()
    try:
        subprocess.run(
            [sys.executable, "-c", _BACKSLASH_CHILD, config, str(out)], cwd=tmp_path, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, check=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired:  # run() has killed the child
        pytest.fail("env.step of a backslash action did not return within 60 s")
    result = json.loads(out.read_text())
    assert result["valid"] == [False, False, False]
    assert all(line.startswith("Observation: Not sent: ") for line in result["first_lines"])
    assert result["look_is_start"]


# --- 2. interpreter commands past the z-machine's 9-letter words ------------------------------


@pytest.mark.parametrize("action", ["transcripts", "TRANSCRIPTION on", "transcrip", "superbriefly", "look. superbrief!"])
def test_interpreter_commands_are_known_by_their_first_nine_letters(action: str) -> None:
    assert interpreter_command(action) == action.lower().split(". ")[-1].split()[0]


@pytest.mark.parametrize("action", ["transcribe", "transcrib", "superb", "scriptures", "go north"])
def test_words_that_only_begin_alike_are_no_interpreter_commands(action: str) -> None:
    assert interpreter_command(action) is None


@pytest.mark.parametrize("action", ["transcripts", "superbriefly"])
def test_long_spelt_interpreter_commands_are_never_sent(coin, action: str, tmp_path, monkeypatch) -> None:
    # "transcripts" wrote a transcript file into the working directory (here a temporary one);
    # "superbriefly" switched the game to short room descriptions for the rest of the episode.
    monkeypatch.chdir(tmp_path)
    env = coin.make_env()
    try:
        start = env.reset(task=coin.tasks(split="train")[0])
        sent = record_sends(env, monkeypatch)
        result = env.step(action=action)
        assert not result.valid and sent == []
        assert result.observation.text.splitlines()[0] == (
            f"Observation: Not sent: {action!r} is a command to the interpreter, not to the game."
        )
        assert env.step(action="look").observation == start
        assert list(tmp_path.iterdir()) == []
    finally:
        env.close()


# --- 3. the rule-based trace of a refused step ----------------------------------------------


def test_a_refused_steps_trace_says_it_was_not_sent(coin) -> None:
    task = coin.tasks(split="train")[0]
    env = coin.make_env()
    try:
        traces = {}
        for action in ["restart", "go west. go east", "look\x00", "dance wildly"]:
            obs = env.reset(task=task)
            result = env.step(action=action)
            t = step_transition(task, "e0", 0, obs, action, result, source="offline", model_id="")
            traces[action] = coin.annotate(transition=t)
    finally:
        env.close()
    for action in ["restart", "go west. go east", "look\x00"]:
        trace = traces[action]
        assert "it was not sent to the game, so nothing happens" in trace, trace
        assert "own words" not in trace and "The game responds" not in trace, trace
        assert "The environment says why: " in trace and "The score stays at 0.00" in trace
    # an unlisted action the game does answer keeps its trace
    assert "the game answers it in its own words. The game responds: " in traces["dance wildly"]


# --- 4. collection asks for the expert's move only for the policies that use it -------------


@pytest.mark.parametrize("policy, asks", [("random", False), ("explore", False), ("expert", True), ("noisy", True)])
def test_collect_asks_for_the_expert_move_only_when_the_policy_uses_it(coin, policy: str, asks: bool, monkeypatch) -> None:
    calls: list[str | None] = []
    expert_action = TextWorldEnv.expert_action
    monkeypatch.setattr(TextWorldEnv, "expert_action", lambda self: calls.append(expert_action(self)) or calls[-1])
    trajectories = coin.collect(tasks=coin.tasks(split="train"), policy=policy, episodes=2, seed=0)
    steps = sum(len(t.transitions) for t in trajectories)
    assert len(calls) == (steps if asks else 0)
    if policy == "expert":  # the moves taken are the expert's
        assert [t.action for tr in trajectories for t in tr.transitions] == calls
