"""TextWorldExpress through the plugin, on the real engine."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import msgspec
import pytest

from dreamgym_core import jvm, stopping
from dreamgym_core.errors import ConfigError
from dreamgym_core.testing.processes import bounded, py4j_noise, stop_process
from dreamgym_plugin_textworld import TextWorldEnv, TwxConfig, make_twx
from dreamgym_plugin_textworld.engines import EngineError, TwxEngine
from dreamgym_plugin_textworld.env import EpisodeOver

from .conftest import TWX_GAMES, twx_config


@pytest.mark.parametrize("game", TWX_GAMES)
def test_gold_path_succeeds_with_reward_only_at_the_end(twx_domains, game: str) -> None:
    domain = twx_domains[game]
    (trajectory,) = domain.collect(tasks=domain.tasks(split="train")[:1], policy="expert", episodes=1, seed=0)
    steps = trajectory.transitions
    assert trajectory.success and steps[-1].done and steps[-1].reward == 1.0
    assert all(t.reward == 0.0 and not t.done for t in steps[:-1])
    assert all(t.valid and t.source == "offline" for t in steps)
    assert all(t.instruction == trajectory.task.instruction != "" for t in steps)
    assert [t.step for t in steps] == list(range(len(steps)))


@pytest.mark.parametrize("game", TWX_GAMES)
def test_random_policy_reaches_a_defined_end(twx_domains, game: str) -> None:
    domain = twx_domains[game]
    for trajectory in domain.collect(tasks=domain.tasks(split="test"), policy="random", episodes=2, seed=1):
        last = trajectory.transitions[-1]
        assert last.done and len(trajectory.transitions) <= domain.config.max_steps
        assert last.reward == (1.0 if last.success else 0.0)
        assert all(t.valid for t in trajectory.transitions)


def no_op_steps(domain, split: str = "train", episodes: int = 16) -> list:
    """The real steps of random play that took an action of NO_OP_ACTIONS."""
    from dreamgym_plugin_textworld.domain import NO_OP_ACTIONS

    played = domain.collect(tasks=domain.tasks(split=split), policy="random", episodes=episodes, seed=3)
    return [t for trajectory in played for t in trajectory.transitions if t.action.lower() in NO_OP_ACTIONS]


@pytest.mark.parametrize("game", TWX_GAMES)
def test_no_real_no_op_step_is_judged_implausible(twx_domains, game: str) -> None:
    # loop.check_transitions fails the experience model's answers the domain rules out: a rule
    # the real game breaks would fail its true answers too.
    from dreamgym_core.records import Observation

    domain = twx_domains[game]
    steps = no_op_steps(domain)
    assert len(steps) >= 5, f"random play took {len(steps)} no-op actions: too few to check the rule"
    for t in steps:
        reason = domain.implausible(state=Observation(text=t.state), action=t.action, next_state=Observation(text=t.next_state))
        assert reason == "", f"{game}: the real step {t.action!r} was judged implausible: {reason}"


def test_a_look_that_lists_a_new_item_to_take_is_implausible(twx_domains) -> None:
    from dreamgym_core.records import ExperienceResult, Observation

    domain = twx_domains["coin"]
    starts = [domain.initial_observation(task) for task in domain.tasks(split="train") + domain.tasks(split="test")]
    start = next(obs for obs in starts if "take coin" not in obs.admissible_actions)  # the coin is elsewhere
    lines = start.text.splitlines()
    invented = "\n".join([*lines[:-1], lines[-1] + "; take coin"])
    reason = domain.implausible(state=start, action="look around", next_state=Observation(text=invented))
    assert reason == "'look around' changes nothing in the game, but the answer changed the actions"
    scored = start.text.replace("Score: 0.00", "Score: 1.00")
    assert "score" in domain.implausible(state=start, action="inventory", next_state=Observation(text=scored))
    # a move's answer depends on the unseen room: not judged
    assert domain.implausible(state=start, action="move east", next_state=Observation(text=invented)) == ""
    assert domain.implausible(state=start, action="inventory", next_state=start) == ""
    # corrected, the look changes nothing: the state, and no win
    corrected = domain.correct(state=start, action="look around", answer=ExperienceResult(
        reasoning="", next_state=invented, reward=0.0, done=False, success=False))  # fmt: skip
    assert (corrected.next_state, corrected.done, corrected.success, corrected.valid) == (start.text, False, False, True)
    assert domain.implausible(state=start, action="look around", next_state=Observation(text=corrected.next_state)) == ""
    # "look" is a no-op the state never lists: the real game refuses it, so the correction does too
    # (it was valid=True, whatever the model answered, and the synthetic episode went on)
    assert "look" not in start.admissible_actions
    unlisted = domain.correct(state=start, action="look", answer=ExperienceResult(
        reasoning="", next_state=invented, reward=0.0, done=False, success=False, valid=False))  # fmt: skip
    assert (unlisted.next_state, unlisted.valid) == (start.text, False)
    unknown = Observation(text=start.text)  # no action list: the model's verdict stands
    assert not domain.correct(state=unknown, action="look", answer=ExperienceResult(
        reasoning="", next_state=invented, reward=0.0, done=False, success=False, valid=False)).valid  # fmt: skip


def test_env_step_info_keeps_the_engine_score(twx_domains, twx_env) -> None:
    obs = twx_env.reset(task=twx_domains["coin"].tasks(split="train")[0])
    scores = []
    while True:
        result = twx_env.step(action=twx_env.expert_action())
        scores.append(result.info["score"])
        if result.done:
            break
    assert scores[-1] == 1.0 and result.success and not result.info["truncated"]
    assert scores == sorted(scores)
    assert obs.text.startswith("Observation: ") and obs.admissible_actions == sorted(obs.admissible_actions)
    with pytest.raises(EpisodeOver):
        twx_env.step(action="look around")


def test_step_after_close_is_refused_and_starts_no_engine(twx_domains) -> None:
    # It went on to a new JVM, which answered "ERROR: Interface is not initialized" as if it
    # were the game's observation, and that JVM outlived the env.
    env = twx_domains["coin"].make_env()
    env.reset(task=twx_domains["coin"].tasks(split="train")[0])
    env.close()
    with pytest.raises(EpisodeOver, match="reset"):
        env.step(action="look around")
    assert env.engine is None  # handed back to the domain's idle engines; nothing started
    assert env.reset(task=twx_domains["coin"].tasks(split="train")[0]).admissible_actions  # a new episode
    env.close()


def _expert_play(env, task) -> list[str]:
    """The observations of ``task``'s expert episode on ``env``."""
    seen = [env.reset(task=task).text]
    for _ in range(40):
        result = env.step(action=env.expert_action())
        seen.append(result.observation.text)
        if result.done:
            break
    assert result.success
    return seen


def test_closed_envs_hand_their_jvm_to_the_next_envs_and_the_domain_stops_them() -> None:
    # An evaluation of 32 games started 32 JVMs, and the next one 32 more: a JVM with the
    # garbage collection after its start takes 0.5-1 s, and 32 hold about 2.6 GB.
    domain = make_twx(twx_config("coin", train_seeds=4))
    tasks = domain.tasks(split="train")
    try:
        first = [domain.make_env() for _ in range(3)]
        for env, task in zip(first, tasks):
            env.reset(task=task)
        engines = {id(env.engine) for env in first}
        processes = [env.engine._jvm.wrapper._gateway.java_process for env in first]
        for env in first:
            env.close()
        second = [domain.make_env() for _ in range(3)]
        assert {id(env.engine) for env in second} == engines
        # a game depends on its task, not on what the engine played before: the reused
        # engines play the tasks the others played as a fresh domain's engine does
        reused = [_expert_play(env, task) for env, task in zip(second, reversed(tasks[:3]))]
        assert all(p.poll() is None for p in processes)  # no JVM was stopped, none started
        for env in second:
            env.close()
    finally:
        domain.close()
    for process in processes:
        assert process.wait(timeout=30) is not None  # the domain stopped its idle JVMs
    fresh = make_twx(twx_config("coin", train_seeds=4))
    try:
        assert [_expert_play(fresh.make_env(), task) for task in reversed(tasks[:3])] == reused
    finally:
        fresh.close()


def _interleaved_expert_play(envs, tasks) -> list[list[str]]:
    """Each env's observations over its task's expert episode, the envs stepping in turn."""
    seen = [[env.reset(task=task).text] for env, task in zip(envs, tasks)]
    done = [False] * len(envs)
    for _ in range(40):
        for i, env in enumerate(envs):
            if not done[i]:
                result = env.step(action=env.expert_action() or "look around")
                seen[i].append(result.observation.text)
                done[i] = result.done
    return seen


@pytest.mark.parametrize("game", TWX_GAMES)
def test_games_sharing_a_jvm_play_as_games_alone_in_theirs(game: str) -> None:
    # 32 test games in 32 JVMs held 2.6 GB; games_per_jvm puts several in one JVM, each in
    # its own interface, which must keep the games apart (no shared generator or state).
    played, jvms = {}, {}
    for per_jvm in (2, 1):
        domain = make_twx(twx_config(game, train_seeds=3, games_per_jvm=per_jvm))
        tasks = domain.tasks(split="train")  # the domain's probe engine takes the first seat
        envs = [domain.make_env() for _ in tasks]
        try:
            played[per_jvm] = _interleaved_expert_play(envs, tasks)
            jvms[per_jvm] = {env.engine._jvm.wrapper._gateway.java_process.pid for env in envs}
        finally:
            for env in envs:
                env.close()
            domain.close()
    assert len(jvms[2]) == 2 and len(jvms[1]) == 3  # seats: probe + 1, then 2
    assert played[2] == played[1]
    assert all(len(episode) > 2 for episode in played[2])


def test_a_jvm_that_dies_ends_every_game_in_it_and_each_next_reset_starts_again(twx_domains) -> None:
    domain = make_twx(twx_config("coin", train_seeds=2, games_per_jvm=2))
    tasks = twx_domains["coin"].tasks(split="train")[:2]
    envs = [domain.make_env() for _ in tasks]  # no probe here: both sit in one JVM
    try:
        firsts = [env.reset(task=task) for env, task in zip(envs, tasks)]
        process = envs[0].engine._jvm.wrapper._gateway.java_process
        assert envs[1].engine._jvm.wrapper._gateway.java_process is process
        process.kill()
        process.wait()
        with pytest.raises(EngineError, match=r"^env 'twx': step: the TextWorldExpress engine \(JVM\) has exited"):
            envs[0].step(action="look around")
        # the other game went with the JVM: one line, not an answer from a new JVM's empty interface
        with pytest.raises(EngineError, match=r"^env 'twx': step: no game loaded \(after an engine stops, reset first\)$"):
            envs[1].step(action="look around")
        assert [env.reset(task=task) for env, task in zip(envs, tasks)] == firsts  # one new JVM for both
        assert envs[0].engine._jvm.wrapper._gateway.java_process is envs[1].engine._jvm.wrapper._gateway.java_process
        assert all(env.step(action="look around").valid for env in envs)
    finally:
        for env in envs:
            env.close()
        domain.close()


def test_a_shared_jvm_stops_when_its_last_engine_closes() -> None:
    domain = make_twx(twx_config("coin", train_seeds=2, games_per_jvm=2))
    envs = [domain.make_env() for _ in range(2)]
    try:
        for env in envs:
            env.reset(task=domain.tasks(split="train")[0])  # the probe: a third engine, its own JVM
        process = envs[0].engine._jvm.wrapper._gateway.java_process
        domain.close()  # the envs are still out
        envs[0].close()
        assert process.poll() is None  # the other env's game still runs in it
        assert envs[1].step(action="look around").valid
        envs[1].close()
        assert process.wait(timeout=30) is not None
    finally:
        for env in envs:
            env.close()


def test_an_env_closed_after_its_domain_stops_its_jvm() -> None:
    domain = make_twx(twx_config("coin", train_seeds=2))
    env = domain.make_env()
    env.reset(task=domain.tasks(split="train")[0])
    process = env.engine._jvm.wrapper._gateway.java_process
    domain.close()  # a run interrupted while its envs are out
    assert process.poll() is None
    env.close()
    assert process.wait(timeout=30) is not None


def test_invalid_action_reaches_the_engine_and_is_flagged(twx_domains, twx_env) -> None:
    before = twx_env.reset(task=twx_domains["twc"].tasks(split="train")[0])
    result = twx_env.step(action="juggle the wardrobe")
    assert not result.valid and not result.done and result.reward == 0.0
    assert "not sure what you mean" in result.observation.text  # the engine's own answer
    assert result.observation.admissible_actions == before.admissible_actions
    shouted = twx_env.step(action="  LOOK   around ")
    assert shouted.valid  # admissibility ignores case and spacing
    # and the engine carries it out: sent as written, it answered "Unknown action" yet was recorded valid
    assert "not sure what you mean" not in shouted.observation.text
    assert shouted.observation.text == twx_env.step(action="look around").observation.text


def test_max_steps_truncates_as_failure(twx_domains, twx_env) -> None:
    env = TextWorldEnv(twx_env.engine, max_steps=3, max_observation_chars=600, max_action_chars=300)
    env.reset(task=twx_domains["coin"].tasks(split="train")[0])
    results = [env.step(action="look around") for _ in range(3)]
    assert [r.done for r in results] == [False, False, True]
    assert results[-1].info["truncated"] and not results[-1].success and results[-1].reward == 0.0


def test_reset_is_deterministic_and_initial_observation_matches(twx_domains, twx_env) -> None:
    domain = twx_domains["cookingworld"]
    task = domain.tasks(split="valid")[0]
    assert twx_env.reset(task=task) == twx_env.reset(task=task, seed=123) == domain.initial_observation(task)


def test_explore_policy_records_the_engines_answer_to_unlisted_actions(twx_domains) -> None:
    """Explore episodes take actions the state does not offer; the real engine refuses them
    (valid=False, reward 0) without ending the episode."""
    domain = twx_domains["coin"]
    trajectories = domain.collect(tasks=domain.tasks(split="train")[:4], policy="explore", episodes=8, seed=0)
    steps = [t for trajectory in trajectories for t in trajectory.transitions]
    refused = [t for t in steps if not t.valid]
    assert refused and len(refused) < len(steps)
    assert all(t.action not in t.admissible_actions for t in refused)
    assert all(t.action in t.admissible_actions for t in steps if t.valid)
    lasts = {id(trajectory.transitions[-1]) for trajectory in trajectories}
    assert all(not t.done or id(t) in lasts for t in refused)  # done only at the step cap
    assert all(t.truncated == (t.done and not (t.success or t.reward)) for t in steps if id(t) in lasts)
    assert any(t.truncated for t in steps) and not any(t.truncated for t in steps if id(t) not in lasts)
    assert all(not t.success and t.reward == 0.0 for t in refused)


def test_collect_is_reproducible_from_its_seed(twx_domains) -> None:
    domain = twx_domains["mapreader"]
    tasks = domain.tasks(split="train")
    a = domain.collect(tasks=tasks, policy="noisy", episodes=2, seed=5)
    b = domain.collect(tasks=tasks, policy="noisy", episodes=2, seed=5)
    assert msgspec.json.encode(a) == msgspec.json.encode(b)


@pytest.mark.parametrize("game, params", [("coin", {"numLocations": 5}), ("twc", {"numLocations": 3, "numItemsToPutAway": 2})])
def test_expert_demos_are_the_same_in_every_engine_launch(game: str, params: dict[str, int]) -> None:
    # Upstream's gold agents for coin and twc walk at random with a clock-seeded generator:
    # before the engine seeded them, these two launches disagreed in 4 of 4 tries on each game.
    def expert_paths() -> list[list[str]]:
        domain = make_twx(twx_config(game, params=params, train_seeds=12, max_steps=40))  # a JVM of its own
        try:
            trajectories = domain.collect(tasks=domain.tasks(split="train"), policy="expert", episodes=12, seed=0)
        finally:
            domain.close()
        assert all(t.success for t in trajectories)
        return [[step.action for step in t.transitions] for t in trajectories]

    assert expert_paths() == expert_paths()


def test_the_shortest_expert_path_is_never_longer_and_stays_within_the_step_cap() -> None:
    """coin's gold agent walks at random: the first walk that wins is the expert's by default, as
    upstream's; ``expert_path: shortest`` keeps the shortest of the 50. With 3 rooms and 3 distractors
    the first walks of train seeds 8, 16 and 37 took 9, 15 and 9 steps where 3 suffice."""
    params = {"numLocations": 3, "includeDoors": 0, "numDistractorItems": 3}

    def expert_lengths(expert_path: str) -> list[int]:
        domain = make_twx(twx_config("coin", params=params, train_seeds=40, max_steps=40, expert_path=expert_path))
        try:
            played = domain.collect(tasks=domain.tasks(split="train"), policy="expert", episodes=40, seed=0)
        finally:
            domain.close()
        assert all(t.success for t in played)
        return [len(t.transitions) for t in played]

    first, shortest = expert_lengths("first"), expert_lengths("shortest")
    assert all(s <= f for s, f in zip(shortest, first, strict=True))
    assert max(first) > 8 and max(shortest) <= 4


@pytest.mark.parametrize("game", TWX_GAMES)
def test_the_expert_leaves_no_java_object_to_release_later(twx_domains, game: str) -> None:
    # A proxy left for Python's cycle collector messages its JVM at some later moment, from
    # any thread; with that JVM stopped (a hung engine) the thread blocks for good. Coin and
    # twc run the seeded gold agent, the others read upstream's gold path (a Java list).
    from py4j.finalizer import ThreadSafeFinalizer

    domain = twx_domains[game]
    domain.collect(tasks=domain.tasks(split="train")[:1], policy="random", episodes=1, seed=0)  # the JVM's own objects
    before = set(ThreadSafeFinalizer.finalizers)
    (trajectory,) = domain.collect(tasks=domain.tasks(split="train")[:1], policy="expert", episodes=1, seed=0)
    assert trajectory.success
    assert set(ThreadSafeFinalizer.finalizers) - before == set()


def test_splits_use_disjoint_engine_seeds(twx_domains) -> None:
    domain = twx_domains["coin"]
    seeds = {split: {t.payload["seed"] for t in domain.tasks(split=split)} for split in ("train", "valid", "test")}
    assert not seeds["train"] & seeds["test"] and not seeds["train"] & seeds["valid"] and not seeds["valid"] & seeds["test"]
    assert {t.payload["split"] for t in domain.tasks(split="test")} == {"test"}


def test_unknown_game_fails_listing_games() -> None:
    with pytest.raises(ConfigError, match=r"unknown game 'cooking' \(available: .*cookingworld.*twc"):
        make_twx(TwxConfig(game="cooking"))


def test_bad_parameter_fails_listing_known_ones() -> None:
    domain = make_twx(TwxConfig(game="twc", params={"numRooms": 2}))
    try:
        with pytest.raises(ConfigError) as err:
            domain.tasks(split="train")
        message = str(err.value)
        assert "\n" not in message and "numRooms" in message and "numItemsToPutAway" in message
    finally:
        domain.close()


def test_parameter_past_32_bits_fails_naming_it() -> None:
    # The engine reads 32-bit integers and, given more, leaves the game unloaded without a word.
    domain = make_twx(TwxConfig(game="coin", params={"numLocations": 99999999999}))
    try:
        with pytest.raises(ConfigError, match=r"^env 'twx': game 'coin' parameter numLocations=99999999999 is out of range"):
            domain.tasks(split="train")
    finally:
        domain.close()


def test_a_game_whose_state_is_not_json_is_a_config_error_and_no_variation(twx_domains) -> None:
    # twc with no items to put away scores 0/0: the engine writes "score":NaN, which is not JSON.
    domain = twx_domains["twc"]
    assert domain.make_variation(domain.tasks(split="train")[0], "numItemsToPutAway=0") is None
    empty = make_twx(twx_config("twc", params={"numLocations": 1, "numItemsToPutAway": 0}))
    try:
        with pytest.raises(ConfigError) as err:
            empty.tasks(split="train")
        message = str(err.value)
        assert "\n" not in message and "not valid JSON" in message
        assert message.startswith("env 'twx': game 'twc' params 'numItemsToPutAway=0,numLocations=1' seed 0: ")
    finally:
        empty.close()


@pytest.mark.parametrize("value", [7, 2, -1])
def test_an_on_off_flag_other_than_0_or_1_is_a_config_error(value: int) -> None:
    # The engine played includeDoors=7 as 0, under a task id of its own.
    with pytest.raises(ConfigError, match=rf"^env\.config\.params\.includeDoors: {value} is not an on/off flag value \(0 or 1\)$"):
        make_twx(TwxConfig(game="coin", params={"numLocations": 4, "includeDoors": value}))


def test_a_rejected_variation_leaves_the_parent_game_playable(twx_domains) -> None:
    # The engine drops its loaded game when it rejects a load; the parent must be loaded again.
    domain = twx_domains["coin"]
    parent = domain.tasks(split="train")[0]
    before = domain.initial_observation(parent)
    assert domain.make_variation(parent, "numLocations=99") is None
    assert domain.initial_observation(parent) == before


def test_a_game_the_engine_did_not_load_is_a_config_error() -> None:
    class Unloaded:  # what the engine's interface answers when it has no game
        def load(self, game: str, params: str) -> str:
            return ""

        def generateNewGameJSON(self, seed: int, fold: str, gold: bool) -> str:
            text = "ERROR: Game generator is not initialized.  Call load() before attempting to generate new games."
            return json.dumps({"observation": text})

        def getTaskDescription(self) -> str:
            return "Task description unavailable"

    engine = TwxEngine()
    engine._jvm.wrapper = object()  # no JVM: the calls go to the interface above
    engine._server, engine._generation = Unloaded(), engine.host.generation
    engine.load({"game": "coin", "params": {"numLocations": 2}, "seed": 0})
    with pytest.raises(ConfigError, match=r"game 'coin' params 'numLocations=2': the engine did not load the game"):
        engine.reset()


def test_variation_builds_a_synthetic_train_task_from_a_real_reset(twx_domains) -> None:
    domain = twx_domains["mapreader"]
    parent = domain.tasks(split="train")[0]
    assert "seed" in domain.describe_variation(parent) and "maxDistanceApart" in domain.describe_variation(parent)
    # the engine ignores mapreader's includeDoors: offered, it made the same game under a new id
    assert "includeDoors" not in domain.describe_variation(parent) and "limitInventorySize" in domain.describe_variation(parent)
    assert "includeDoors" not in domain.make_variation(parent, "seed=42, includeDoors=1").payload["params"]
    child = domain.make_variation(parent, "seed=42, numLocations: 6")
    assert child is not None
    assert (child.origin, child.parent_id, child.split) == ("synthetic", parent.id, "train")
    assert child.payload["seed"] == 42 and child.payload["params"]["numLocations"] == 6
    assert "coin" in child.instruction  # the varied game's own objective
    assert domain.initial_observation(child) != domain.initial_observation(parent)


def test_a_variation_of_a_train_world_plays_in_that_world(twx_domains) -> None:
    """loop.demos: same-world-first shows a variation the offline steps of its world's seed task."""
    domain = twx_domains["coin"]
    parent, other = domain.tasks(split="train")[:2]
    from dreamgym_core.experience import world_namer

    child = domain.make_variation(parent, f"seed={other.payload['seed']}")
    assert child is not None and child.id != other.id
    world_of = world_namer(domain)
    assert world_of(child.id) == world_of(other.id) == other.id != world_of(parent.id)


def test_proposed_variations_are_other_train_worlds_of_the_same_kind(twx_domains) -> None:
    import numpy as np

    domain = twx_domains["coin"]
    parent = domain.tasks(split="train")[-1]
    texts = domain.propose_variations(parent, n=4, rng=np.random.default_rng(0))
    assert len(set(texts)) == 4
    children = [domain.make_variation(parent, text) for text in texts]
    assert all(c is not None and c.split == "train" and c.payload["params"] == parent.payload["params"] for c in children)
    assert parent.payload["seed"] not in {c.payload["seed"] for c in children}
    assert texts == domain.propose_variations(parent, n=4, rng=np.random.default_rng(0))  # the rng decides


@pytest.mark.parametrize(
    "text",
    ["no numbers here", "seed=20001", "numLocations=99", "seed=0", "numLocations=99999999999", "includeDoors=2", "seed=5, limitInventorySize=-1"],
    ids=["nothing", "test-seed", "engine-rejects", "unchanged", "past-32-bits", "flag-not-0-or-1", "negative-flag"],
)
def test_invalid_variations_give_none(twx_domains, text: str) -> None:
    domain = twx_domains["coin"]
    assert domain.make_variation(domain.tasks(split="train")[0], text) is None


def test_demo_prompts_match_the_prompts_of_real_play() -> None:
    """SFT demos rebuilt from stored transitions show the agent exactly what real play shows."""
    from dreamgym_core.agent import build_agent_prompt
    from dreamgym_core.loop import demo_examples

    from .conftest import twx_config

    domain = make_twx(twx_config("coin"))  # its own engine: a fresh gold path
    try:
        (episode,) = domain.collect(tasks=domain.tasks(split="train")[:1], policy="expert", episodes=1, seed=0)
        assert episode.success
        first_demo_prompt = demo_examples([episode], max_steps=6, history_window=2)[0][0]
        observation = domain.initial_observation(episode.task)
    finally:
        domain.close()
    assert observation.admissible_actions
    expected = build_agent_prompt(task=episode.task, observation=observation, history=[], step=0, max_steps=6, history_window=2)
    assert first_demo_prompt == expected and "Admissible actions: " in expected


def test_the_action_list_of_a_state_text_reads_back(twx_domains, twx_env) -> None:
    domain = twx_domains["coin"]
    observation = twx_env.reset(task=domain.tasks(split="train")[0])
    assert domain.admissible_in(observation.text) == observation.admissible_actions
    assert domain.admissible_in("no actions line") == []


def test_varied_coin_states_keep_what_the_task_needs(twx_domains, twx_env) -> None:
    """On real coin resets: every exit and the coin survive the strongest variation; furniture goes."""
    domain = twx_domains["coin"]
    for task in domain.tasks(split="train") + domain.tasks(split="test"):
        observation = twx_env.reset(task=task)
        varied = domain.vary_state(observation.text, observation.admissible_actions, key="k", strength=1.0)
        first_line = varied.splitlines()[0]
        for action in observation.admissible_actions:
            if action.startswith("move "):
                assert f"To the {action.split()[1].capitalize()}" in first_line
        assert ("take coin" in observation.admissible_actions) == ("coin" in first_line)
        assert len(varied) < len(observation.text)  # coin kitchens always have furniture


def test_lone_surrogate_in_an_action_is_an_invalid_step(twx_domains, twx_env) -> None:
    before = twx_env.reset(task=twx_domains["coin"].tasks(split="train")[0])
    result = twx_env.step(action="take \ud800coin")  # cannot be encoded for the JVM: never sent
    assert not result.valid and not result.done and "lone surrogate U+D800" in result.observation.text
    assert result.observation.admissible_actions == before.admissible_actions
    assert twx_env.step(action="look around").valid


@contextmanager
def own_jvm_env() -> Iterator[TextWorldEnv]:
    """A coin env alone in its JVM, to break: the shared domains' games run in JVMs of their own."""
    domain = make_twx(twx_config("coin", games_per_jvm=1))
    env = domain.make_env()
    try:
        yield env
    finally:
        env.close()
        domain.close()


def test_a_dead_engine_is_a_one_line_error_and_the_next_reset_starts_another(twx_domains) -> None:
    task = twx_domains["coin"].tasks(split="train")[0]
    with own_jvm_env() as env:
        first = env.reset(task=task)
        process = env.engine._jvm.wrapper._gateway.java_process
        process.kill()
        process.wait()
        with pytest.raises(EngineError, match=r"^env 'twx': step: the TextWorldExpress engine \(JVM\) has exited"):
            env.step(action="look around")
        assert env.reset(task=task) == first  # a new JVM


def test_a_machine_without_java_is_a_one_line_error_naming_it(monkeypatch, tmp_path) -> None:
    domain = make_twx(twx_config("coin"))  # its own, with no running engine to reuse
    monkeypatch.setenv("PATH", str(tmp_path))  # no java here
    env = domain.make_env()
    try:
        with pytest.raises(EngineError, match=r"^env 'twx': load: no `java` on PATH: TextWorldExpress needs a Java runtime"):
            env.reset(task=domain.tasks(split="train")[0])
    finally:
        env.close()
        domain.close()


def fake_java(tmp_path: Path, body: str) -> None:
    """A `java` on PATH that runs ``body`` (a shell script) instead of starting a JVM."""
    script = tmp_path / "java"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)


def test_a_java_that_exits_at_start_is_a_one_line_error(monkeypatch, tmp_path) -> None:
    fake_java(tmp_path, 'echo "UnsupportedClassVersionError" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    engine = TwxEngine()
    with pytest.raises(EngineError, match=r"^env 'twx': load: the TextWorldExpress engine \(JVM\) did not start \(java exited before it was up"):
        engine.load({"game": "coin", "params": {"numLocations": 2}, "seed": 0})
    engine.close()


def test_a_jvm_that_hangs_at_start_is_stopped_after_the_call_limit(monkeypatch, tmp_path) -> None:
    fake_java(tmp_path, f'echo $$ > {tmp_path}/pid; exec sleep 600')
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    engine = TwxEngine(call_timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(EngineError, match=r"^env 'twx': load: the TextWorldExpress engine \(JVM\) did not start within 1 s"):
        engine.load({"game": "coin", "params": {"numLocations": 2}, "seed": 0})
    assert time.monotonic() - start < 30
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left sleeping
        os.kill(pid, 0)
    engine.close()


def test_ctrl_c_while_a_jvm_starts_stops_that_jvm(monkeypatch, tmp_path) -> None:
    # The start runs in a thread of its own; an interrupt of the thread waiting for it left the
    # JVM it was starting unowned: no guard held it, so no close reached it, and it ran until
    # the process exited.
    fake_java(tmp_path, f'echo $$ > {tmp_path}/pid; exec sleep 600')
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    engine = TwxEngine(call_timeout_s=60.0)
    ctrl_c = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    ctrl_c.start()
    with pytest.raises(KeyboardInterrupt):
        engine.load({"game": "coin", "params": {"numLocations": 2}, "seed": 0})
    ctrl_c.join()
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left sleeping
        os.kill(pid, 0)
    # The start thread ends once its JVM is gone; it may take a moment on a loaded machine.
    deadline = time.monotonic() + 10.0
    while [t for t in threading.enumerate() if t.name == "twx-start"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name == "twx-start"]
    engine.close()


def test_an_engine_that_stops_answering_mid_call_is_a_one_line_error(twx_domains) -> None:
    from py4j.protocol import Py4JNetworkError

    class Broken:
        def stepJSON(self, action: str) -> str:
            raise Py4JNetworkError("Answer from Java side is empty")

    with own_jvm_env() as env:
        env.reset(task=twx_domains["coin"].tasks(split="train")[0])
        env.engine._server = Broken()
        with pytest.raises(EngineError, match=r"step: .* stopped answering \(Answer from Java side is empty\)$"):
            env.step(action="look around")
        with pytest.raises(EngineError, match="no game loaded"):
            env.engine.step("look around")


def test_a_connection_error_during_a_call_is_a_one_line_engine_error(twx_domains) -> None:
    class Broken:
        def stepJSON(self, action: str) -> str:
            raise BrokenPipeError(32, "Broken pipe")

    task = twx_domains["coin"].tasks(split="train")[0]
    with own_jvm_env() as env:
        first = env.reset(task=task)
        env.engine._server = Broken()
        with pytest.raises(EngineError, match=r"step: .* stopped answering \(\[Errno 32\] Broken pipe\)$"):
            env.step(action="look around")
        assert env.reset(task=task) == first


_LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stops a JVM with SIGSTOP, watched in /proc")


@_LINUX
def test_a_hung_engine_is_stopped_after_call_timeout_s_and_the_next_reset_starts_another(twx_domains, caplog) -> None:
    task = twx_domains["coin"].tasks(split="train")[0]
    domain = make_twx(twx_config("coin", call_timeout_s=2))  # its own JVM, to stop; no probe
    env = domain.make_env()
    before = set(threading.enumerate())
    try:
        first = env.reset(task=task)
        process = env.engine._jvm.wrapper._gateway.java_process
        jvm_threads = set(threading.enumerate()) - before  # the watchdog's, and py4j's for that JVM
        stop_process(process.pid)  # hung: its sockets stay open, nothing answers
        with caplog.at_level(logging.INFO):
            error, elapsed = bounded(lambda: env.step(action="look around"), limit_s=30, unblock=process.kill)
        assert isinstance(error, EngineError), error
        assert str(error) == (
            "env 'twx': step: the TextWorldExpress engine (JVM) did not answer within 2 s (call_timeout_s)"
            " and was stopped"
        )
        assert 2 <= elapsed < 15
        assert process.returncode == -signal.SIGKILL  # killed and reaped
        assert py4j_noise(caplog.records) == []
        assert f"twx-watchdog-{process.pid}" in {t.name for t in jvm_threads}
        for thread in jvm_threads:
            thread.join(10)
        assert not [t.name for t in jvm_threads if t.is_alive()]
        assert env.reset(task=task) == first  # a new JVM
        assert env.step(action="look around").valid
    finally:
        env.close()


@_LINUX
def test_a_jvm_killed_during_a_call_is_one_line_without_py4j_tracebacks(twx_domains, caplog) -> None:
    task = twx_domains["coin"].tasks(split="train")[0]
    with own_jvm_env() as env:
        first = env.reset(task=task)
        process = env.engine._jvm.wrapper._gateway.java_process
        stop_process(process.pid)
        killer = threading.Timer(0.5, process.kill)  # dies mid-call; the limit is far off
        killer.start()
        with caplog.at_level(logging.INFO):
            error, _ = bounded(lambda: env.step(action="look around"), limit_s=30, unblock=process.kill)
        killer.join()
        assert isinstance(error, EngineError), error
        assert "step: the TextWorldExpress engine (JVM) stopped answering" in str(error)
        assert py4j_noise(caplog.records) == []
        assert env.reset(task=task) == first


@_LINUX
def test_ctrl_c_during_a_call_is_an_interrupt_without_py4j_tracebacks(twx_domains, caplog) -> None:
    # py4j's handling of the interrupt raised an AttributeError of its own, which a rollout
    # took for the engine's failure: a run went on playing after Ctrl-C.
    task = twx_domains["coin"].tasks(split="train")[0]
    domain = make_twx(twx_config("coin", call_timeout_s=30))
    env = domain.make_env()  # its own JVM, to stop
    try:
        env.reset(task=task)
        process = env.engine._jvm.wrapper._gateway.java_process
        stop_process(process.pid)  # the call below waits for an answer until the interrupt
        ctrl_c = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        ctrl_c.start()
        with caplog.at_level(logging.INFO), pytest.raises(KeyboardInterrupt):
            env.step(action="look around")
        ctrl_c.join()
        assert py4j_noise(caplog.records) == []
        process.kill()
    finally:
        env.close()
        domain.close()  # which closes the engine, and py4j's client of the killed JVM with it


@_LINUX
def test_closing_after_ctrl_c_killed_the_jvm_logs_no_py4j_traceback(twx_domains, caplog, monkeypatch) -> None:
    # The terminal's Ctrl-C reaches the JVMs in its process group too. The run then closes its
    # engines, and detaching a game from a JVM still on its way out is a call that "succeeds":
    # py4j logs a page of tracebacks at ERROR and returns. Its shutdown request fails the same
    # way, and a Java object Python collects later (at exit) would be deleted through a client
    # still marked connected, logging a failed connection. Here the JVM is killed and, as while
    # it shuts down, not seen to have exited before each call.
    task = twx_domains["coin"].tasks(split="train")[0]
    domain = make_twx(twx_config("coin", games_per_jvm=1))
    env = domain.make_env()
    env.reset(task=task)
    gateway = env.engine._jvm.wrapper._gateway
    left_over = gateway.jvm.java.util.ArrayList()  # a proxy still held when the run ends
    gateway.java_process.kill()
    gateway.java_process.wait()
    monkeypatch.setattr(jvm, "_java_process", lambda wrapper: None)
    monkeypatch.setattr(stopping, "_requested", signal.SIGINT)
    with caplog.at_level(logging.DEBUG):
        env.close()  # the engine goes back to the domain's pool
        domain.close()  # which closes it: the game is detached, the JVM is asked to shut down
        del left_over
        gc.collect()
    assert py4j_noise(caplog.records) == []
    assert any(r.name == "dreamgym_core.jvm" and "in a stop" in r.getMessage() for r in caplog.records)


def test_a_jvm_that_dies_while_its_wrapper_is_built_leaves_no_client_to_message_it(caplog) -> None:
    # Ctrl-C reaches a JVM while its wrapper's constructor still talks to it (ScienceWorld's
    # makes several calls once its gateway is up). The constructor fails, and the half-built
    # wrapper, never handed to a guard, kept a py4j client marked connected: each Java object
    # Python freed later (at exit) logged a failed connection to the dead JVM.
    from textworld_express import TextWorldExpressEnv

    gateways = []

    def start():
        wrapper = TextWorldExpressEnv(envStepLimit=10)
        gateways.append(wrapper._gateway)
        wrapper.built = wrapper._gateway.jvm.java.util.ArrayList()  # a proxy the constructor made
        wrapper._gateway.java_process.kill()
        wrapper._gateway.java_process.wait()
        wrapper.built.size()  # the constructor's next call

    guard = jvm.JvmGuard(
        start=start, name="twx", label="env 'twx'", simulator="TextWorldExpress", error=EngineError, call_timeout_s=30
    )  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(EngineError, match=r"^env 'twx': load: the TextWorldExpress engine \(JVM\) did not start"):
            with guard.call("load"):
                pass
        gateway = gateways.pop()
        assert not gateway._gateway_client.is_connected
        assert gateway._callback_server.is_shutdown  # no longer listening
        del gateway
        gc.collect()  # the failed start's frames, and the proxies they held, are freed
    assert py4j_noise(caplog.records) == []
    assert guard.wrapper is None


def test_what_py4j_logs_during_a_call_that_succeeds_is_kept(twx_domains, caplog) -> None:
    domain = make_twx(twx_config("coin", call_timeout_s=0))  # no limit: no watchdog
    env = domain.make_env()
    try:
        env.reset(task=twx_domains["coin"].tasks(split="train")[0])
        assert env.engine._jvm.watchdog is None
        with caplog.at_level(logging.DEBUG, logger="py4j"):
            env.step(action="look around")
        sent = [r.getMessage() for r in caplog.records if r.name == "py4j.java_gateway"]
        assert any(m.startswith("Command to send") and "stepJSON" in m and "look around" in m for m in sent)
    finally:
        env.close()


def test_call_timeout_s_is_checked() -> None:
    with pytest.raises(msgspec.ValidationError, match="call_timeout_s"):
        twx_config("coin", call_timeout_s=-1)
    assert TwxConfig().call_timeout_s == 60.0


@pytest.mark.parametrize("limit", [1e10, float("inf")])
def test_a_call_timeout_s_past_a_day_is_refused_naming_the_field(limit) -> None:
    # It was accepted, and the first reset failed with "the TextWorldExpress engine (JVM) did not
    # start (timestamp out of range for platform time_t)": no word of the field that caused it.
    from dreamgym_core.config import convert_config

    with pytest.raises(ConfigError, match=r"^p\.yaml: Expected `float` <= 86400\.0 - at `\$\.env\.config\.call_timeout_s`$"):
        convert_config({"game": "coin", "call_timeout_s": limit}, TwxConfig, "p.yaml", "$.env.config")
    assert twx_config("coin", call_timeout_s=86400).call_timeout_s == 86400.0  # a day is still a limit
    # an engine built in Python is refused before a JVM starts, naming the argument
    with pytest.raises(ValueError, match=r"^env 'twx': call_timeout_s is (1e\+10|inf); it takes 0 \(no limit\) to 86400 s"):
        TwxEngine(call_timeout_s=limit)


@pytest.mark.parametrize("action", [5, None, b"look around"])
def test_a_non_str_action_is_a_type_error_and_the_episode_goes_on(twx_domains, twx_env, action) -> None:
    # A Python caller's int used to fail inside the action check with an AttributeError.
    task = twx_domains["coin"].tasks(split="train")[0]
    first = twx_env.reset(task=task)
    with pytest.raises(TypeError, match=rf"^textworld env: step\(action=\.\.\.\) takes a str, got {type(action).__name__}$"):
        twx_env.step(action=action)
    result = twx_env.step(action="look around")
    assert result.valid and result.info["steps"] == 1 and result.observation.admissible_actions == first.admissible_actions


COIN_2 = {"numLocations": 2, "includeDoors": 0}  # a fold of 1,000 seeds holds 8 worlds (measured)


def test_distinct_worlds_draws_each_split_from_worlds_no_earlier_task_has() -> None:
    plain = make_twx(TwxConfig(game="coin", params=COIN_2, train_seeds=32, valid_seeds=4, test_seeds=32))
    picky = make_twx(TwxConfig(game="coin", params=COIN_2, train_seeds=8, valid_seeds=4, test_seeds=4, distinct_worlds=True))
    try:
        # Seeds as they come: 32 train or test seeds are 8 worlds each, and the valid worlds are train worlds.
        plain_worlds = {s: [plain.world_key(t) for t in plain.tasks(split=s)] for s in ("train", "valid", "test")}
        assert len(set(plain_worlds["train"])) == len(set(plain_worlds["test"])) == 8
        assert set(plain_worlds["valid"]) <= set(plain_worlds["train"])
        worlds = {s: [picky.world_key(t) for t in picky.tasks(split=s)] for s in ("train", "valid", "test")}
        assert [len(set(w)) for w in worlds.values()] == [8, 4, 4]
        assert len(set().union(*worlds.values())) == 16  # no world in two splits
        assert [t.payload["seed"] for t in picky.tasks(split="train")][0] == 0  # the first new seeds, in order
    finally:
        plain.close()
        picky.close()


def test_distinct_worlds_names_a_split_the_game_cannot_fill() -> None:
    domain = make_twx(TwxConfig(game="coin", params=COIN_2, train_seeds=8, valid_seeds=4, test_seeds=5, distinct_worlds=True))
    try:
        with pytest.raises(ConfigError, match=r"^env 'twx': coin \{'numLocations': 2, 'includeDoors': 0\}: the test seeds hold "
                           r"4 distinct worlds that no task of train or valid has, and env.config.test_seeds asks for 5"):
            domain.tasks(split="test")
    finally:
        domain.close()


def test_with_distinct_worlds_a_variation_never_gives_a_held_out_world() -> None:
    params = {"numLocations": 2, "maxDistanceApart": 1}
    domains = [make_twx(TwxConfig(game="mapreader", params=params, train_seeds=4, valid_seeds=0, test_seeds=32, distinct_worlds=on))
               for on in (False, True)]
    try:
        plain, picky = domains
        held_out = {plain.world_key(t) for t in plain.tasks(split="test")}
        parent = plain.tasks(split="train")[0]
        # a train seed whose world is a test task's (measured: one of mapreader's first 32 test worlds)
        seed = next(s for s in range(1, 1000) if plain.world_key(plain.make_variation(parent, f"seed={s}")) in held_out)
        assert plain.make_variation(parent, f"seed={seed}") is not None
        assert picky.make_variation(picky.tasks(split="train")[0], f"seed={seed}") is None
        assert picky.make_variation(picky.tasks(split="train")[0], f"seed={seed + 1}") is not None
    finally:
        for domain in domains:
            domain.close()
