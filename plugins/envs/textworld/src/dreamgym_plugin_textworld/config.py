"""Config Structs of the two registered domains (every field has a default)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from dreamgym_core.config import Config, NonNegativeInt, PositiveInt, Probability
from dreamgym_core.jvm import MAX_CALL_TIMEOUT_S

# Measured on a 2-core machine at load 3-4: a step answers in about half a millisecond, a
# load + reset + gold path in under 0.1 s, and even the first JVM start with its first game
# (which the limit does not cover) in under 0.7 s. A minute is ~100x the slowest normal call,
# so only a hung engine reaches it, and short next to a run.
DEFAULT_CALL_TIMEOUT_S = 60.0

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
    grounded_moves: Annotated[
        bool,
        Meta(description=(
            "The rule-based reasoning of a move (move/go and a compass word) quotes the state's sentence about that "
            "way (\"To the East you see the chamber.\") before the game's response, so the experience model reads "
            "the destination off the state rather than recalls it."
        )),
    ] = False


class TwxConfig(_Common):
    """A TextWorldExpress game (coin, twc, cookingworld, mapreader, arithmetic, sorting, simonsays, peckingorder)."""

    game: Annotated[str, Meta(description="TextWorldExpress game name.")] = "coin"
    call_timeout_s: Annotated[
        float,
        Meta(
            ge=0.0,
            le=MAX_CALL_TIMEOUT_S,
            description=(
                "Time limit of the JVM's start and of one engine call (load, reset, step, expert path), in seconds. An engine that"
                " does not answer within it (a hung JVM) is killed, the call fails with EngineError and the"
                " next reset starts a new JVM. Normal calls take milliseconds; 0 turns the limit off. At most"
                " 86400 (a day): longer is no limit in practice, and a far longer one cannot be waited for"
                " (the JVM's start would fail)."
            ),
        ),
    ] = DEFAULT_CALL_TIMEOUT_S
    games_per_jvm: Annotated[
        int,
        Meta(
            ge=1,
            le=1024,
            description=(
                "Games (envs) that share one JVM, each in its own engine interface. A JVM holds about 80 MB, and an"
                " evaluation plays one game per test task at once. A JVM that dies or hangs ends every game in it"
                " (each is an env error); 1 gives every game its own JVM."
            ),
        ),
    ] = 8
    expert_path: Annotated[
        Literal["first", "shortest"],
        Meta(
            description=(
                "coin and twc only, whose gold agents walk the map at random: the expert plays the first walk of"
                " 50 that reaches the goal, as upstream does (first), or the shortest of the 50 (shortest). With"
                " 3 rooms and 3 distractors, first gave walks of 2 to 15 steps where 2 to 4 suffice: 6 of the"
                " main job's 64 expert episodes ran past its 8-step cap and others went back and forth."
            )
        ),
    ] = "first"
    distinct_worlds: Annotated[
        bool,
        Meta(
            description=(
                "Each split's tasks are its first seeds whose world (instruction and initial state, in whatever order"
                " the engine lists the room's objects) is new: not an"
                " earlier task's of the split, and for valid not a train task's, for test neither a train nor a valid"
                " task's; curriculum variations never give a valid or test task's world. Off, a split is its first"
                " seeds as they come: the folds of small games repeat a handful of worlds (coin with 2 rooms and no"
                " doors: 8 per fold, and its dev fold's first 16 seeds are train worlds)."
            )
        ),
    ] = False


class TwConfig(_Common):
    """A TextWorld game generated with tw-make (coin_collector, treasure_hunter, cooking, custom)."""

    game: Annotated[str, Meta(description="TextWorld game kind.")] = "coin_collector"
    train_seeds: Annotated[PositiveInt, Meta(description="Seed tasks in the train split (each generates a game).")] = 8
    valid_seeds: Annotated[NonNegativeInt, Meta(description="Seed tasks in the validation split.")] = 2
    test_seeds: Annotated[PositiveInt, Meta(description="Seed tasks in the test split.")] = 4
    cache_dir: Annotated[
        str, Meta(description="Where generated games are kept; empty: $DREAMGYM_TEXTWORLD_CACHE or ~/.cache/dreamgym/textworld.")
    ] = ""
