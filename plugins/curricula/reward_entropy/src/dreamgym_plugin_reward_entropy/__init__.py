"""DreamGym reward-entropy curriculum: reward-variance task values and M_task variations."""

from __future__ import annotations

from dreamgym_core import hookimpl
from dreamgym_core.specs import ComponentSpec

from .config import RewardEntropyConfig
from .curriculum import RewardEntropyCurriculum

__all__ = ["dreamgym_register_curricula", "RewardEntropyCurriculum", "RewardEntropyConfig"]


def _build(config: RewardEntropyConfig, *, tasks, task_generator=None, encoder=None, seed: int = 0, domain=None, **_):
    return RewardEntropyCurriculum(config, tasks=tasks, task_generator=task_generator, encoder=encoder, seed=seed, domain=domain)


@hookimpl
def dreamgym_register_curricula() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="reward-entropy", factory=_build, config_type=RewardEntropyConfig,
            description="Reward-variance task values; M_task varies top-value tasks; lambda caps the synthetic share.",
        )
    ]
