"""TextWorld (tw-make) games through the plugin, on the real engine.

Games are generated once per session into a temporary cache (see conftest).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dreamgym_core.errors import ConfigError
from dreamgym_plugin_textworld import TwConfig, make_tw

from .conftest import TW_GAMES


@pytest.mark.parametrize(
    "game",
    [pytest.param(g, marks=pytest.mark.slow) if g == "cooking" else g for g in TW_GAMES],  # cooking: slow generation
)
def test_gold_path_succeeds_with_reward_only_at_the_end(tw_domains, game: str) -> None:
    domain = tw_domains[game]
    (trajectory,) = domain.collect(tasks=domain.tasks(split="train"), policy="expert", episodes=1, seed=0)
    steps = trajectory.transitions
    assert trajectory.success and steps[-1].reward == 1.0
    assert all(t.reward == 0.0 and not t.done for t in steps[:-1])
    assert all(t.valid for t in steps)
    assert trajectory.task.instruction and trajectory.task.payload["game"] == game


def test_random_policy_reaches_a_defined_end(tw_domains) -> None:
    domain = tw_domains["treasure_hunter"]
    for trajectory in domain.collect(tasks=domain.tasks(split="train"), policy="random", episodes=2, seed=3):
        last = trajectory.transitions[-1]
        assert last.done and len(trajectory.transitions) <= domain.config.max_steps
        assert last.reward == (1.0 if last.success else 0.0)


def test_noisy_expert_replans_after_deviations(tw_domains) -> None:
    domain = tw_domains["coin_collector"]
    trajectories = domain.collect(tasks=domain.tasks(split="train"), policy="noisy", episodes=3, seed=0)
    assert all(t.success for t in trajectories)  # the engine's planner recovers from random moves


def test_invalid_action_is_flagged_and_answered_by_the_engine(tw_domains) -> None:
    domain = tw_domains["coin_collector"]
    env = domain.make_env()
    try:
        env.reset(task=domain.tasks(split="train")[0])
        result = env.step(action="dance wildly")
        assert not result.valid and not result.done and result.reward == 0.0
        assert "recognise" in result.observation.text or "understand" in result.observation.text
    finally:
        env.close()


def test_games_are_cached_and_deterministic(tw_domains, tw_cache: str) -> None:
    domain = tw_domains["coin_collector"]
    task = domain.tasks(split="train")[0]
    files = sorted(Path(tw_cache).glob("coin_collector-*-train-s0.z8"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    fresh = make_tw(domain.config)  # a new domain reuses the cached game
    try:
        assert fresh.tasks(split="train")[0] == task
        assert fresh.initial_observation(task) == domain.initial_observation(task)
    finally:
        fresh.close()
    assert files[0].stat().st_mtime_ns == stamp


def test_splits_use_disjoint_generation_seeds(tw_domains) -> None:
    domain = tw_domains["coin_collector"]
    train = {t.payload["seed"] for t in domain.tasks(split="train")}
    test = {t.payload["seed"] for t in domain.tasks(split="test")}
    assert train and test and not train & test


def test_variation_changes_the_generated_world(tw_domains) -> None:
    domain = tw_domains["coin_collector"]
    parent = domain.tasks(split="train")[0]
    assert "level" in domain.describe_variation(parent)
    child = domain.make_variation(parent, "seed=7")
    assert child is not None and child.origin == "synthetic" and child.parent_id == parent.id
    assert child.instruction and domain.initial_observation(child).text.startswith("Observation: ")
    assert domain.make_variation(parent, "seed=2000001") is None  # a test seed


def test_unknown_game_and_parameter_fail_listing_what_exists(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"unknown game 'zork' \(available: coin_collector, cooking, custom, treasure_hunter\)"):
        make_tw(TwConfig(game="zork"))
    with pytest.raises(ConfigError, match=r"no parameter 'levle' \(known: level\)"):
        make_tw(TwConfig(game="coin_collector", params={"levle": 3}))
