"""dreamgym-plugin-verl: GRPO and PPO through verl's PPO trainer (GPU scale).

Components: ``verl-grpo`` and ``verl-ppo`` (algorithms that run their own loop on
verl's Ray trainer). DreamGym's environment runs as the verl agent loop
``dreamgym_agent``; see :mod:`dreamgym_plugin_verl.agent_loop`.
Heavy modules (verl, ray) are imported only when a run or a test needs them.
"""

from __future__ import annotations

from dreamgym_core import hookimpl
from dreamgym_core.specs import ComponentSpec

from .config import AGENT_LOOP_NAME, VerlConfig
from .trainer import VerlTrainer
from .translate import translate

__all__ = ["VerlConfig", "VerlTrainer", "translate", "AGENT_LOOP_NAME"]


@hookimpl
def dreamgym_register_algos() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="verl-grpo",
            factory=VerlTrainer,
            config_type=VerlConfig,
            description="GRPO on verl's Ray trainer (FSDP + vLLM/SGLang); DreamGym env as a verl agent loop. Needs CUDA.",
        ),
        ComponentSpec(
            name="verl-ppo",
            factory=VerlTrainer,
            config_type=VerlConfig,
            description="PPO (GAE, LLM critic) on verl's Ray trainer; DreamGym env as a verl agent loop. Needs CUDA.",
        ),
    ]
