"""Replay buffer ``annoy``: the exact buffer's storage with an annoy index.

annoy indexes are immutable, so one is built (in a background thread) over the
rows of sealed segments; rows written since, and rows the index lacks, are
searched exactly, and the two result lists are merged by score. A rebuild never
blocks queries: they keep using the previous index until the new one is swapped in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamgym_core import hookimpl
from dreamgym_core.specs import ComponentSpec
from dreamgym_plugin_exact import build_encoder

from .buffer import AnnoyBuffer, AnnoyConfig

__all__ = ["AnnoyBuffer", "AnnoyConfig", "make_annoy"]


def make_annoy(config: AnnoyConfig, *, encoder: Any, path: str | Path | None = None) -> AnnoyBuffer:
    """Factory of the ``annoy`` component."""
    previous = [build_encoder(config.previous_encoder)] if config.previous_encoder else []
    return AnnoyBuffer(config, encoder=encoder, path=path, previous_encoders=previous)


@hookimpl
def dreamgym_register_buffers() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="annoy",
            factory=make_annoy,
            config_type=AnnoyConfig,
            description="annoy approximate top-k over sealed segments plus an exact fresh tail, merged by score.",
        )
    ]
