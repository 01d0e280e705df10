"""Config Struct of the ``sciworld`` domain (every field has a default)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dreamgym_core.config import Config, NonNegativeInt, PositiveInt, Probability
from dreamgym_core.jvm import MAX_CALL_TIMEOUT_S

__all__ = ["SciWorldConfig", "DEFAULT_CALL_TIMEOUT_S"]

# Measured on a 2-core machine at load 5-7: a step answers in 1-15 ms, listing the valid actions
# in at most 0.2 s, the JVM's start in about 1.5 s, and a load with its gold path plus a reset
# in 0.2-4.5 s on 28 of the 30 tasks; the mendelian-genetics tasks' gold paths take 11-19 s. Two
# minutes is six times that, so only a hung simulator reaches it, and short next to a run.
DEFAULT_CALL_TIMEOUT_S = 120.0


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
    call_timeout_s: Annotated[
        float,
        Meta(
            ge=0.0,
            le=MAX_CALL_TIMEOUT_S,
            description=(
                "Time limit of the JVM's start and of one simulator call (load, reset, step, listing actions), in seconds."
                " A simulator that does not answer within it (a hung JVM) is killed, the call fails with EngineError and"
                " the next call starts a new JVM. Normal calls take milliseconds to 20 s (a mendelian-genetics gold"
                " path); 0 turns the limit off. At most 86400 (a day): longer is no limit in practice, and a far"
                " longer one cannot be waited for (the JVM's start would fail)."
            ),
        ),
    ] = DEFAULT_CALL_TIMEOUT_S
    describe_actions: Annotated[
        bool, Meta(description="Append ScienceWorld's action templates to each task's instruction (its states list no actions).")
    ] = True
