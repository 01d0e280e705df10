"""A model-free encoder: signed feature hashing of word unigrams and bigrams."""

from __future__ import annotations

import re
import zlib
from typing import Annotated, Sequence

import numpy as np
from msgspec import Meta

from dreamgym_core.config import Config

__all__ = ["HashingConfig", "HashingEncoder", "features"]

_WORD = re.compile(r"[a-z0-9]+")


class HashingConfig(Config):
    """Settings of the hashing encoder."""

    dim: Annotated[int, Meta(ge=8, le=65536, description="Embedding dimension (hash buckets).")] = 256
    bigrams: Annotated[bool, Meta(description="Also hash adjacent word pairs (captures some word order).")] = True


def features(text: str, bigrams: bool = True) -> list[str]:
    """The hashed features of ``text``: lower-cased words, then adjacent pairs."""
    words = _WORD.findall(text.lower())
    if not bigrams:
        return words
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


class HashingEncoder:
    """phi without a model: each feature adds +-1 to one of ``dim`` buckets (crc32)."""

    def __init__(self, config: HashingConfig | None = None) -> None:
        self.config = config or HashingConfig()
        self.dim = self.config.dim
        self.id = f"hashing-v1-d{self.dim}{'-bi' if self.config.bigrams else ''}"

    def encode(self, *, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            hashes = np.fromiter(
                (zlib.crc32(f.encode()) for f in features(text, self.config.bigrams)), dtype=np.uint32
            )
            signs = np.where(hashes & np.uint32(1 << 31), -1.0, 1.0).astype(np.float32)
            np.add.at(out[row], hashes % self.dim, signs)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out
