"""A model-free encoder: signed feature hashing of word unigrams and bigrams."""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
import zlib
from typing import Annotated, Sequence

import numpy as np
from msgspec import Meta

from dreamgym_core.config import Config

__all__ = ["HashingConfig", "HashingEncoder", "features"]

# ASCII text keeps the tokens every stored hashing embedding was made with.
_ASCII_WORD = re.compile(r"[a-z0-9]+")


@functools.cache
def _unicode_word() -> re.Pattern[str]:
    """Letters and digits of any script, with the combining marks that belong to them.

    On ASCII text it finds exactly what ``_ASCII_WORD`` finds. Python's ``\\w`` leaves
    out combining marks (Devanagari vowel signs, for one), so they are listed.
    """
    ranges: list[list[int]] = []
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code))[0] == "M":
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    marks = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
    return re.compile(rf"[^\W_](?:[^\W_]|[{marks}])*")


def _words(text: str) -> list[str]:
    text = text.lower()
    if text.isascii():
        return _ASCII_WORD.findall(text)
    return _unicode_word().findall(unicodedata.normalize("NFC", text))


class HashingConfig(Config):
    """Settings of the hashing encoder."""

    dim: Annotated[int, Meta(ge=8, le=65536, description="Embedding dimension (hash buckets).")] = 256
    bigrams: Annotated[bool, Meta(description="Also hash adjacent word pairs (captures some word order).")] = True


def features(text: str, bigrams: bool = True) -> list[str]:
    """The hashed features of ``text``: lower-cased words, then adjacent pairs.

    A word is a run of letters and digits of any script (with their combining
    marks); text that is not ASCII is NFC-normalised first. ASCII text gives the
    same words as ever (``[a-z0-9]+``), so its embeddings do not change.
    """
    words = _words(text)
    if not bigrams:
        return words
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


class HashingEncoder:
    """phi without a model: each feature adds +-1 to one of ``dim`` buckets (crc32).

    Rows are L2-normalised; only a text without words gives a zero row. The signs of an
    even number of features can cancel in every bucket (``bigrams=False``: "close to" at
    dim 256); such a row counts each feature as +1 instead.
    """

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
            if hashes.size and not out[row].any():
                # Only rows that cancelled out take the fallback: every other row, and the
                # embeddings stored with it, stay as they were.
                np.add.at(out[row], hashes % self.dim, np.float32(1.0))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out
