"""Config Struct of the ``sciworld`` domain (every field has a default)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dreamgym_core.config import Config, NonNegativeInt, PositiveInt, Probability

__all__ = ["SciWorldConfig"]


class SciWorldConfig(Config):
    """One ScienceWorld task; its variations are the seed tasks of each split."""

    task: Annotated[str, Meta(description="ScienceWorld task name (e.g. find-living-thing, boil, test-conductivity).")] = (
        "find-non-living-thing"
    )
    simplifications: Annotated[
        str,
        Meta(description="ScienceWorld simplification string: 'easy' (teleport, open doors, ...), '' or a comma list."),
    ] = "easy"
    train_variations: Annotated[PositiveInt, Meta(description="Seed tasks in the train split (the first of the task's train variations).")] = 32
    valid_variations: Annotated[NonNegativeInt, Meta(description="Seed tasks in the validation split (from its dev variations).")] = 8
    test_variations: Annotated[PositiveInt, Meta(description="Seed tasks in the test split (from its test variations).")] = 16
    max_steps: Annotated[PositiveInt, Meta(description="Step cap per episode; reaching it ends the episode as a failure.")] = 30
    noise: Annotated[
        Probability, Meta(description="Noisy-expert policy: chance of a random valid action instead of the gold path's next one.")
    ] = 0.3
    max_observation_chars: Annotated[PositiveInt, Meta(description="Budget of the observation part of the abstract state.")] = 1200
    describe_actions: Annotated[
        bool, Meta(description="Append ScienceWorld's action templates to each task's instruction (its states list no actions).")
    ] = True
