"""Text encoders (phi) for the replay buffer: ``minilm`` and ``hashing``.

Both return L2-normalised float32 rows and carry an ``id`` naming model and
version; a buffer stores that id with every embedding and backfills when it changes.
"""

from __future__ import annotations

from dreamgym_core import hookimpl
from dreamgym_core.specs import ComponentSpec

from .hashing import HashingConfig, HashingEncoder
from .minilm import MiniLMConfig, MiniLMEncoder

__all__ = ["HashingConfig", "HashingEncoder", "MiniLMConfig", "MiniLMEncoder"]


@hookimpl
def dreamgym_register_encoders() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="minilm",
            factory=MiniLMEncoder,
            config_type=MiniLMConfig,
            description="all-MiniLM-L6-v2 sentence encoder (384-d), packaged weights, offline, batched.",
        ),
        ComponentSpec(
            name="hashing",
            factory=HashingEncoder,
            config_type=HashingConfig,
            description="Signed feature hashing of word unigrams and bigrams; no model, for tests and tiny runs.",
        ),
    ]
