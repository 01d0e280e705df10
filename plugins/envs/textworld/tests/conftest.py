"""Shared fixtures: real engines, started once per session.

TextWorldExpress domains each start one JVM; TextWorld games are generated once
per session into a shared cache directory (generation takes seconds per game).
"""

from __future__ import annotations

from typing import Any, Iterator

import msgspec
import pytest

from dreamgym_plugin_textworld import TwConfig, TwxConfig, make_tw, make_twx

TWX_GAMES = ("coin", "twc", "cookingworld", "mapreader")
TW_GAMES = ("coin_collector", "treasure_hunter", "cooking", "custom")
# Small worlds keep gold paths short and the tests quick.
TWX_PARAMS = {
    "coin": {"numLocations": 4},
    "twc": {"numLocations": 1, "numItemsToPutAway": 2},
    "cookingworld": {"numLocations": 1, "numIngredients": 2, "numDistractorItems": 2},
    "mapreader": {"numLocations": 5, "maxDistanceApart": 3},
}
TW_PARAMS = {
    "coin_collector": {"level": 3},
    "treasure_hunter": {"level": 2},
    "cooking": {"recipe": 1, "take": 1, "go": 1, "cook": 1},
    "custom": {"world_size": 2, "nb_objects": 4, "quest_length": 2},
}


def twx_config(game: str, **extra: Any) -> TwxConfig:
    raw = {"game": game, "params": TWX_PARAMS[game], "train_seeds": 2, "valid_seeds": 1, "test_seeds": 2, **extra}
    return msgspec.convert(raw, type=TwxConfig)


def tw_config(game: str, cache_dir: str, **extra: Any) -> TwConfig:
    raw = {
        "game": game, "params": TW_PARAMS[game], "train_seeds": 1, "valid_seeds": 0, "test_seeds": 1,
        "cache_dir": cache_dir, **extra,
    }  # fmt: skip
    return msgspec.convert(raw, type=TwConfig)


@pytest.fixture(scope="session")
def twx_domains() -> Iterator[dict[str, Any]]:
    domains = {game: make_twx(twx_config(game)) for game in TWX_GAMES}
    yield domains
    for domain in domains.values():
        domain.close()


@pytest.fixture(scope="session")
def twx_env(twx_domains: dict[str, Any]) -> Iterator[Any]:
    """One real env (one JVM) shared by the tests; it loads whichever game a task names."""
    env = twx_domains["coin"].make_env()
    yield env
    env.close()


@pytest.fixture(scope="session")
def tw_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("tw-games"))


@pytest.fixture(scope="session")
def tw_domains(tw_cache: str) -> Iterator[dict[str, Any]]:
    domains = {game: make_tw(tw_config(game, tw_cache)) for game in TW_GAMES}
    yield domains
    for domain in domains.values():
        domain.close()
