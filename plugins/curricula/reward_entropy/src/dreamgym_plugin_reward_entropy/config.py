"""Config of the reward-entropy curriculum."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from dreamgym_core.config import Config, NonNegativeInt, PositiveInt, Probability

__all__ = ["RewardEntropyConfig"]


class RewardEntropyConfig(Config):
    """Task value = reward variance of a group; top-value tasks get M_task variations.

    The paper gives no value for ``lambda``: the default 0.5 keeps at least half of
    every batch on seed tasks so the original task distribution stays covered.
    """

    synthetic_share: Annotated[
        Probability, Meta(description="lambda: at most floor(lambda * n) synthetic tasks per batch of n.")
    ] = msgspec.field(default=0.5, name="lambda")
    grouping: Annotated[
        Literal["task", "cluster"],
        Meta(description="Value group: a task's own rollouts (GRPO) or a cluster of tasks by the encoder (PPO)."),
    ] = "task"
    n_clusters: Annotated[PositiveInt, Meta(description="k of k-means when grouping is 'cluster'.")] = 8
    value_threshold: Annotated[
        float, Meta(ge=-1e9, le=1e9, description="Only tasks with value V > threshold are varied (a finite number).")
    ] = 0.0
    tasks_to_vary: Annotated[NonNegativeInt, Meta(description="Top-value tasks varied after each observe().")] = 2
    generator: Annotated[
        Literal["model", "domain"],
        Meta(description=(
            "Who writes variations: 'model' = M_task (the experience model's variation and selection "
            "prompts); 'domain' = the domain's propose_variations, for a model that cannot write them."
        )),
    ] = "model"
    n_candidates: Annotated[PositiveInt, Meta(description="Variations M_task writes per task; the selection prompt picks one.")] = 4
    exploration: Annotated[Probability, Meta(description="Uniform share of the task sampling probabilities.")] = 0.2
    seed_sampling: Annotated[
        Literal["value", "uniform"],
        Meta(description=(
            "How the seed tasks' share of a batch is drawn: by value, as the synthetic share is ('value'), "
            "or uniformly ('uniform'), so the original task distribution stays evenly covered. The paper "
            "says only that lambda keeps it covered."
        )),
    ] = "value"
    unseen_value: Annotated[
        float, Meta(ge=-1e9, le=1e9, description=(
            "Value assumed for never-observed tasks (0.25 = the binary maximum: try them); a finite number."
        )),
    ] = 0.25
    max_synthetic_tasks: Annotated[
        PositiveInt, Meta(description="Synthetic pool size; beyond it the lowest-value synthetic task is dropped.")
    ] = 256
