"""What games exist, which parameters they take, and how TextWorld games are generated.

TextWorldExpress games are built in memory by the engine from (game, params, fold,
seed). TextWorld games are generated with the ``tw-make`` machinery (the
challenges' ``make`` or ``make_game`` for custom games), compiled with the bundled
Inform 7 compiler into a cache directory, offline and deterministic from the seed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from dreamgym_core.errors import ConfigError

__all__ = [
    "TWX_GAMES",
    "TWX_FLAGS",
    "TW_GAMES",
    "TWX_FOLD_SEEDS",
    "TW_SPLIT_SEEDS",
    "SPLITS",
    "check_game",
    "tw_params",
    "TW_RANGES",
    "tw_allowed",
    "describe_allowed",
    "twx_params_string",
    "check_split",
    "split_range",
    "split_seeds",
    "seed_split",
    "tw_game_path",
    "default_cache_dir",
]

SPLITS = ("train", "valid", "test")

# TextWorldExpress: game -> parameters a task variation may change (the engine knows
# the full list and rejects unknown names with one line listing them).
TWX_GAMES: dict[str, tuple[str, ...]] = {
    "coin": ("numLocations", "numDistractorItems", "includeDoors", "limitInventorySize"),
    "twc": ("numLocations", "numItemsToPutAway", "includeDoors", "limitInventorySize"),
    "cookingworld": ("numLocations", "numIngredients", "numDistractorItems", "includeDoors", "limitInventorySize"),
    # mapreader's includeDoors and simonsays' verbose are left out: the engine accepts and ignores
    # them (the same game under another task id), so a variation setting them was no variation
    "mapreader": ("numLocations", "maxDistanceApart", "maxDistractorItemsPerLocation", "limitInventorySize"),
    "arithmetic": (),
    "sorting": (),
    "simonsays": ("gameLength", "numDistractors", "memorization"),
    "peckingorder": (),
}
# TWX_GAMES parameters that are on/off switches: 0 or 1 (the engine reads -1 as 0, and what it
# makes of 2 is not documented), so a variation may not set them to anything else.
TWX_FLAGS = frozenset({"includeDoors", "limitInventorySize", "memorization", "verbose"})
# The engine's own seed ranges per fold (1,000 seeds each); splits map to folds.
TWX_FOLD_SEEDS: dict[str, tuple[str, int]] = {"train": ("train", 0), "valid": ("dev", 10000), "test": ("test", 20000)}
FOLD_SIZE = 1000

# TextWorld (tw-make): game -> default parameters (all integers; booleans are 0/1).
TW_GAMES: dict[str, dict[str, int]] = {
    "coin_collector": {"level": 5},
    "treasure_hunter": {"level": 3},
    "cooking": {"recipe": 1, "take": 1, "go": 1, "open": 0, "cook": 0, "cut": 0, "drop": 0},
    "custom": {"world_size": 3, "nb_objects": 6, "quest_length": 3},
}
# The values each TextWorld parameter may take (ranges are inclusive). A variation the task
# generator writes is checked against them before a game is generated: generation time grows
# with the world, and world_size=100000 never finishes. Measured on the 2-core machine: custom
# at the corners of its box generates in 1.7-6.3 s (world_size=20, nb_objects=40,
# quest_length=10), while 30/60/30 took over 120 s; coin_collector levels above 150 need more
# than 100 rooms, which TextWorld 1.7 no longer compiles; treasure_hunter's level 30 (its
# hardest) takes 40 s; cooking's own bounds are TextWorld's (its recipe check is an assert).
TW_RANGES: dict[str, dict[str, tuple[int, int] | tuple[int, ...]]] = {
    "coin_collector": {"level": (1, 150)},
    "treasure_hunter": {"level": (1, 30)},
    "cooking": {
        "recipe": (1, 5), "take": (0, 5), "go": (1, 6, 9, 12),
        # drop 0 only: with drop on, TextWorld's cooking generator sets no walkthrough, so the
        # game has no expert plan and "expert" demos were random play that burned the food
        "open": (0, 1), "cook": (0, 1), "cut": (0, 1), "drop": (0,),
    },  # fmt: skip
    "custom": {"world_size": (1, 20), "nb_objects": (0, 40), "quest_length": (1, 10)},
}
# Sets of allowed values, as opposed to (lowest, highest) ranges.
_VALUE_SETS = {("cooking", "go"), ("cooking", "drop")}
# Generation seeds per split: disjoint ranges, so a generated game belongs to one split.
TW_SPLIT_SEEDS: dict[str, int] = {"train": 0, "valid": 1_000_000, "test": 2_000_000}
TW_SPLIT_SIZE = 1_000_000


def check_game(component: str, game: str, known: Any) -> None:
    """Raise a one-line ConfigError naming what exists when ``game`` is unknown."""
    if game not in known:
        raise ConfigError(f"env {component!r}: unknown game {game!r} (available: {', '.join(sorted(known))})")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (available: {', '.join(SPLITS)})")


def split_range(engine: str, split: str) -> range:
    """Every seed of ``split`` on ``engine``; ranges of different splits never overlap."""
    check_split(split)
    if engine == "twx":
        start = TWX_FOLD_SEEDS[split][1]
        return range(start, start + FOLD_SIZE)
    return range(TW_SPLIT_SEEDS[split], TW_SPLIT_SEEDS[split] + TW_SPLIT_SIZE)


def split_seeds(engine: str, split: str, n: int) -> list[int]:
    """The first ``n`` seeds of ``split``."""
    seeds = split_range(engine, split)
    if n > len(seeds):
        raise ConfigError(f"env {engine!r}: {n} {split} seeds requested, at most {len(seeds)} exist")
    return list(seeds[:n])


def seed_split(engine: str, seed: int) -> str | None:
    """The split a seed belongs to, or None when it lies outside every split's range."""
    return next((split for split in SPLITS if seed in split_range(engine, split)), None)


def twx_params_string(params: dict[str, int]) -> str:
    """The engine's "k=v,k=v" parameter string, keys sorted."""
    return ",".join(f"{key}={params[key]}" for key in sorted(params))


def tw_params(game: str, params: dict[str, int]) -> dict[str, int]:
    """Defaults of ``game`` updated with ``params``; unknown names fail listing the known ones."""
    check_game("tw", game, TW_GAMES)
    defaults = TW_GAMES[game]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(
            f"env 'tw': game {game!r} has no parameter {unknown[0]!r} (known: {', '.join(sorted(defaults))})"
        )
    merged = {**defaults, **params}
    for name, value in sorted(merged.items()):
        if value not in tw_allowed(game, name, merged):
            allowed_text = describe_allowed(game, name, merged)
            raise ConfigError(f"env 'tw': game {game!r} parameter {name}={value} is out of range ({allowed_text})")
    return merged


def tw_allowed(game: str, name: str, params: dict[str, int]) -> range | tuple[int, ...]:
    """The values TextWorld parameter ``name`` of ``game`` may take, given the other ``params``."""
    bounds = TW_RANGES[game][name]
    if (game, name) in _VALUE_SETS:
        return bounds
    low, high = bounds
    if game == "cooking" and name == "take":  # the ingredients to fetch are some of the recipe's
        high = min(high, params.get("recipe", high))
    return range(low, high + 1)


def describe_allowed(game: str, name: str, params: dict[str, int]) -> str:
    """``'1-20'``, ``'1, 6, 9 or 12'`` or ``'0-2: at most recipe'``, for messages and prompts."""
    allowed = tw_allowed(game, name, params)
    if isinstance(allowed, tuple):
        return ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}" if len(allowed) > 1 else str(allowed[0])
    text = f"{allowed.start}-{allowed.stop - 1}"
    return text + (": at most recipe" if game == "cooking" and name == "take" else "")


def default_cache_dir() -> str:
    """$DREAMGYM_TEXTWORLD_CACHE, else ~/.cache/dreamgym/textworld."""
    return os.environ.get("DREAMGYM_TEXTWORLD_CACHE") or str(Path.home() / ".cache" / "dreamgym" / "textworld")


def tw_game_path(cache_dir: str, game: str, params: dict[str, int], split: str, seed: int) -> Path:
    """The compiled game for these inputs, generating it into the cache on first use."""
    slug = "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    path = Path(cache_dir) / f"{game}-{slug}-{split}-s{seed}.z8"
    if not path.is_file():
        _generate(path, game, params, split, seed)
    return path


def _make_game(game: str, params: dict[str, int], split: str, options: Any) -> Any:
    import textworld.challenges
    from textworld.generator import make_game

    if game == "custom":
        options.nb_rooms = params["world_size"]
        options.nb_objects = params["nb_objects"]
        length = params["quest_length"]
        options.chaining.min_length = options.chaining.max_length = options.chaining.max_depth = length
        return make_game(options)
    settings: dict[str, Any] = dict(params)
    if game == "cooking":
        settings = {k: bool(v) if k in ("open", "cook", "cut", "drop") else v for k, v in settings.items()}
        settings.update(recipe_seed=0, split=split)
    return textworld.challenges.CHALLENGES[f"tw-{game}"][1](settings, options)


def _generate(path: Path, game: str, params: dict[str, int], split: str, seed: int) -> None:
    """Generate and compile one game; written to a temp dir, then moved (no half files)."""
    from textworld import GameOptions
    from textworld.generator import compile_game

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        options = GameOptions()
        options.seeds = seed
        options.path = str(Path(tmp) / path.name)
        with warnings.catch_warnings():
            # Generation replays walkthroughs with jericho, which warns on every generated game.
            warnings.filterwarnings("ignore", message=".*is not fully supported.*")
            try:
                made = _make_game(game, params, split, options)
            except Exception as exc:  # the generator's own message says what is wrong
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"env 'tw': cannot generate {game} with {params}: {message}") from exc
            compiled = Path(compile_game(made, options))
        shutil.move(str(compiled.with_suffix(".json")), path.with_suffix(".json"))
        shutil.move(str(compiled), path)
