"""Config Structs of the two registered domains (every field has a default)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dreamgym_core.config import Config, NonNegativeInt, PositiveInt, Probability

__all__ = ["TwxConfig", "TwConfig"]


class _Common(Config):
    """Settings shared by both engines."""

    params: Annotated[
        dict[str, int],
        Meta(description="Game parameters (integers; booleans are 0/1). Unknown names fail listing the known ones."),
    ] = {}
    train_seeds: Annotated[PositiveInt, Meta(description="Seed tasks in the train split.")] = 32
    valid_seeds: Annotated[NonNegativeInt, Meta(description="Seed tasks in the validation split.")] = 8
    test_seeds: Annotated[PositiveInt, Meta(description="Seed tasks in the test split.")] = 16
    max_steps: Annotated[PositiveInt, Meta(description="Step cap per episode; reaching it ends the episode as a failure.")] = 50
    noise: Annotated[
        Probability, Meta(description="Noisy-expert policy: chance of a random admissible action instead of the expert's.")
    ] = 0.3
    max_observation_chars: Annotated[
        PositiveInt, Meta(description="Budget of the Observation line of the abstract state.")
    ] = 600
    max_action_chars: Annotated[PositiveInt, Meta(description="Budget of the Actions summary line of the abstract state.")] = 300


class TwxConfig(_Common):
    """A TextWorldExpress game (coin, twc, cookingworld, mapreader, arithmetic, sorting, simonsays, peckingorder)."""

    game: Annotated[str, Meta(description="TextWorldExpress game name.")] = "coin"


class TwConfig(_Common):
    """A TextWorld game generated with tw-make (coin_collector, treasure_hunter, cooking, custom)."""

    game: Annotated[str, Meta(description="TextWorld game kind.")] = "coin_collector"
    train_seeds: Annotated[PositiveInt, Meta(description="Seed tasks in the train split (each generates a game).")] = 8
    valid_seeds: Annotated[NonNegativeInt, Meta(description="Seed tasks in the validation split.")] = 2
    test_seeds: Annotated[PositiveInt, Meta(description="Seed tasks in the test split.")] = 4
    cache_dir: Annotated[
        str, Meta(description="Where generated games are kept; empty: $DREAMGYM_TEXTWORLD_CACHE or ~/.cache/dreamgym/textworld.")
    ] = ""
