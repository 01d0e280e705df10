"""Config of the exact buffer (shared by backends that reuse its storage)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta

from dreamgym_core.config import Config

__all__ = ["EncoderRef", "ExactConfig"]


class EncoderRef(Config):
    """An encoder component of an installed plugin, for embedding queries in an old space."""

    plugin: Annotated[str, Meta(description="Entry-point name of the plugin providing the encoder.")] = "encoders"
    name: Annotated[str, Meta(description="Encoder component name, e.g. 'minilm' or 'hashing'.")] = "hashing"
    config: Annotated[dict[str, Any], Meta(description="That encoder's settings.")] = {}


class ExactConfig(Config):
    """Storage, capacity and backfill settings of a replay buffer."""

    capacity: Annotated[int, Meta(ge=0, description="Most records kept; 0 is unbounded.")] = 0
    keep_offline: Annotated[
        bool, Meta(description="Never evict offline seed data (synthetic, then real, go first, oldest first).")
    ] = True
    dedup: Annotated[
        Literal["content", "none"],
        Meta(description="content: drop a transition whose state, action, next state, reward and flags are stored."),
    ] = "content"
    flush_every: Annotated[int, Meta(gt=0, description="Records held in memory before a frame is written.")] = 1024
    segment_records: Annotated[int, Meta(gt=0, description="Records per segment file before it is sealed.")] = 65536
    fsync: Annotated[bool, Meta(description="fsync on flush() and close() (power-loss safety).")] = True
    strict: Annotated[bool, Meta(description="Raise on a corrupt segment instead of recovering the rest.")] = False
    on_encoder_change: Annotated[
        Literal["backfill", "error"],
        Meta(description="When stored embeddings come from another encoder: re-embed online, or refuse to open."),
    ] = "backfill"
    backfill_batch: Annotated[int, Meta(gt=0, description="Records re-embedded per backfill step.")] = 256
    backfill_background: Annotated[
        bool, Meta(description="Run the backfill in a background thread (else call backfill_step()).")
    ] = True
    previous_encoder: Annotated[
        EncoderRef | None,
        Meta(description="The encoder that embedded the stored items, to query them during a backfill."),
    ] = None
