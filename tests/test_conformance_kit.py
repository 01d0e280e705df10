"""The conformance kit fails deliberately broken stand-in components (and passes good ones)."""

from __future__ import annotations

import random

import msgspec
import numpy as np
import pytest

from dreamgym_core.errors import ConformanceError
from dreamgym_core.testing import BagOfWordsEncoder, check_buffer

# --- buffers ---

_encoder = BagOfWordsEncoder()


class GoodBuffer:
    def __init__(self) -> None:
        self.items: list = []
        self.closed = False

    def add(self, *, transitions):
        new = [t for t in transitions if t not in self.items]
        self.items.extend(new)
        return len(new)

    def _ranked(self, query):
        if not self.items:
            return []
        stored = _encoder.encode(texts=[f"{t.state} {t.action}" for t in self.items])
        asked = _encoder.encode(texts=[f"{query[0]} {query[1]}"])[0]
        return [self.items[i] for i in np.argsort(-(stored @ asked), kind="stable")]

    def retrieve(self, *, queries, k):
        return [self._ranked(q)[:k] for q in queries]

    def sample(self, *, n, seed=None):
        return random.Random(seed).sample(self.items, min(n, len(self.items)))

    def __len__(self):
        return len(self.items)

    def flush(self):
        pass

    def close(self):
        self.closed = True


class AllRecords(GoodBuffer):
    def retrieve(self, *, queries, k):
        return [self._ranked(q) for q in queries]


class PadsWithRepeats(GoodBuffer):
    def retrieve(self, *, queries, k):
        return [(self._ranked(q)[:1] * k)[:k] for q in queries]


class OneListForAllQueries(GoodBuffer):
    def retrieve(self, *, queries, k):
        return [self._ranked(queries[0])[:k]]


class PadsBeyondSize(GoodBuffer):
    """Returns k records even when fewer are stored, by repeating the ranking."""

    def retrieve(self, *, queries, k):
        return [(self._ranked(q) * (k // max(len(self.items), 1) + 1))[:k] for q in queries]


class SampleIgnoresSeed(GoodBuffer):
    def sample(self, *, n, seed=None):
        return random.sample(self.items, n)


class SampleInvents(GoodBuffer):
    def sample(self, *, n, seed=None):
        return [msgspec.structs.replace(self.items[0], state=f"made up {i}") for i in range(n)]


def test_a_good_buffer_passes():
    check_buffer(GoodBuffer)


@pytest.mark.parametrize(
    "broken, message",
    [
        (AllRecords, r"retrieve\(k=4\) on 24 records returned 24 for one query, expected at most 4"),
        (PadsWithRepeats, r"retrieve\(k=4\) returned the same record more than once for one query"),
        (OneListForAllQueries, r"retrieve\(\) of 2 queries returned 1 lists, expected one list per query"),
        (PadsBeyondSize, r"retrieve\(k=30\) on 24 records returned 30 for one query, expected at most 24"),
        (SampleIgnoresSeed, r"sample\(n=5, seed=0\) twice gave different records"),
        (SampleInvents, r"sample\(\) returned a record that was never added"),
    ],
)
def test_check_buffer_fails_a_broken_buffer(broken, message):
    with pytest.raises(ConformanceError, match=rf"{broken.__name__}: {message}"):
        check_buffer(broken)
