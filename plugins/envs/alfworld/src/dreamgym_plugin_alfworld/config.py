"""Config Struct of the ``alfworld`` domain (every field has a default)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dreamgym_core.config import Config, NonNegativeInt, PositiveInt, Probability

__all__ = ["AlfWorldConfig", "TASK_TYPES", "SPLIT_DIRS"]

# ALFWorld's six task types, in its own numbering (1-6), as traj_data.json names them.
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
# DreamGym's splits in ALFWorld's data: train, the seen-scene games (ALFWorld's in-distribution
# evaluation) to pick checkpoints on, and the unseen-scene games (out of distribution) held out.
SPLIT_DIRS = {"train": "train", "valid": "valid_seen", "test": "valid_unseen"}


class AlfWorldConfig(Config):
    """ALFWorld games from its data folder; each game is one seed task."""

    data_path: Annotated[
        str,
        Meta(description="ALFWorld's json_2.1.1 folder (holding train/, valid_seen/, valid_unseen/); empty: $ALFWORLD_DATA/json_2.1.1."),
    ] = ""
    task_types: Annotated[list[str], Meta(description="Task types to keep (traj_data.json 'task_type'); empty: all six.")] = []
    train_games: Annotated[NonNegativeInt, Meta(description="Seed tasks in the train split, in path order; 0: every game.")] = 0
    valid_games: Annotated[NonNegativeInt, Meta(description="Seed tasks in the validation split (valid_seen); 0: every game.")] = 0
    test_games: Annotated[NonNegativeInt, Meta(description="Seed tasks in the test split (valid_unseen); 0: every game.")] = 0
    max_steps: Annotated[PositiveInt, Meta(description="Step cap per episode (the paper's ALFWorld setting: 50).")] = 50
    noise: Annotated[
        Probability, Meta(description="Noisy-expert policy: chance of a random admissible action instead of the planner's next one.")
    ] = 0.3
    # The longest text of a game is its opening room description, which names every receptacle:
    # 800 characters in a kitchen the size of FloorPlan16 (52 receptacles). 600 cut its drawers,
    # fridge, microwave, sinkbasin and stoveburners, which the heat, cool and clean tasks need.
    max_observation_chars: Annotated[
        PositiveInt,
        Meta(
            description=(
                "Budget of the observation line of the state; past it the text is cut. The opening room description"
                " of a 52-receptacle kitchen (ALFWorld's FloorPlan16) is 800 characters: a smaller budget hides receptacles."
            )
        ),
    ] = 1200
    # The state's action list is the only list a generated state carries (the synthetic env reads
    # it back), and past the budget whole verbs are dropped. ALFWorld's big kitchens (FloorPlan16:
    # 52 receptacles, 16 objects on its table) need about 1,360 characters; 2,000 leaves margin.
    max_action_chars: Annotated[
        PositiveInt,
        Meta(description="Budget of the compact action list in the state text; past it, whole verbs are left out of the list."),
    ] = 2000

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [t for t in self.task_types if t not in TASK_TYPES]
        if unknown:
            raise ValueError(f"task_types: unknown task type {unknown[0]!r} (ALFWorld's: {', '.join(TASK_TYPES)})")
