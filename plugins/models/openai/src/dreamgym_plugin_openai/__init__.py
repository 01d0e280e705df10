"""DreamGym model backend for OpenAI-compatible servers (vLLM, SGLang, llama.cpp, TGI)."""

from __future__ import annotations

from dreamgym_core import ComponentSpec, hookimpl

from .backend import ModelCallError, OpenAIBackend
from .config import OpenAIConfig

__all__ = ["OpenAIBackend", "OpenAIConfig", "ModelCallError", "build_openai"]


def build_openai(config: OpenAIConfig) -> OpenAIBackend:
    """The ``openai`` component."""
    return OpenAIBackend(config)


@hookimpl
def dreamgym_register_models() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="openai", factory=build_openai, config_type=OpenAIConfig,
            description="Any OpenAI-compatible HTTP server, with async concurrency, timeouts and retries.",
        )
    ]
