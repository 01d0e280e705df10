"""DreamGym local torch trainer: multi-turn GRPO and PPO, SFT and DPO baselines.

Registers the algorithms ``grpo``, ``ppo``, ``sft`` and ``dpo``. Each factory is
called as ``factory(config, policy=<local-weights backend>, seed=int)``.
"""

from __future__ import annotations

from dreamgym_core import hookimpl
from dreamgym_core.specs import ComponentSpec

from .config import DPOConfig, GRPOConfig, PPOConfig, SFTConfig

__all__ = ["dreamgym_register_algos"]


def _grpo(config: GRPOConfig, *, policy, seed: int = 0, **_):
    from .grpo import GRPO

    return GRPO(config, policy=policy, seed=seed)


def _ppo(config: PPOConfig, *, policy, seed: int = 0, **_):
    from .ppo import PPO

    return PPO(config, policy=policy, seed=seed)


def _sft(config: SFTConfig, *, policy, seed: int = 0, **_):
    from .sft import SFT

    return SFT(config, policy=policy, seed=seed)


def _dpo(config: DPOConfig, *, policy, seed: int = 0, **_):
    from .dpo import DPO

    return DPO(config, policy=policy, seed=seed)


@hookimpl
def dreamgym_register_algos() -> list[ComponentSpec]:
    return [
        ComponentSpec(name="grpo", factory=_grpo, config_type=GRPOConfig,
                      description="Multi-turn GRPO (group-normalised outcome advantage, verl maths) on a local HF policy."),
        ComponentSpec(name="ppo", factory=_ppo, config_type=PPOConfig,
                      description="Multi-turn PPO (GAE, value head, verl maths) on a local HF policy."),
        ComponentSpec(name="sft", factory=_sft, config_type=SFTConfig,
                      description="SFT baseline: behaviour cloning of successful trajectories."),
        ComponentSpec(name="dpo", factory=_dpo, config_type=DPOConfig,
                      description="DPO baseline: expert vs non-expert responses of the same task."),
    ]
