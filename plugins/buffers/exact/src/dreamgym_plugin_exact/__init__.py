"""Replay buffer ``exact``: segment storage, dedup, eviction, backfill, exact top-k.

The storage layer here is reused by other backends (``annoy``), which only change
how the current embedding space is searched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamgym_core import hookimpl
from dreamgym_core.specs import ComponentSpec

from .buffer import ExactBuffer, content_key
from .config import EncoderRef, ExactConfig
from .search import best_first, embedding_text, merge_ranked, topk_cosine

__all__ = [
    "ExactBuffer",
    "ExactConfig",
    "EncoderRef",
    "build_encoder",
    "content_key",
    "best_first",
    "embedding_text",
    "merge_ranked",
    "topk_cosine",
    "make_exact",
]


def build_encoder(ref: EncoderRef) -> Any:
    """Build an encoder component of an installed plugin (for ``previous_encoder``)."""
    from dreamgym_core.config import convert_config
    from dreamgym_core.plugins import Plugins

    plugins = Plugins.for_names([ref.plugin], where="buffer.config.previous_encoder.plugin")
    spec = plugins.component("encoder", ref.name, where="buffer.config.previous_encoder.name")
    config = convert_config(ref.config, spec.config_type, "buffer", "$.buffer.config.previous_encoder.config")
    return spec.factory(config)


def make_exact(config: ExactConfig, *, encoder: Any, path: str | Path | None = None) -> ExactBuffer:
    """Factory of the ``exact`` component."""
    previous = [build_encoder(config.previous_encoder)] if config.previous_encoder else []
    return ExactBuffer(config, encoder=encoder, path=path, previous_encoders=previous)


@hookimpl
def dreamgym_register_buffers() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="exact",
            factory=make_exact,
            config_type=ExactConfig,
            description="Exact batched cosine top-k over phi(s, a), crash-safe segments, online backfill.",
        )
    ]
