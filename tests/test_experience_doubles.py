"""Test doubles for the experience-model core tests (not product code).

- ``ScriptedLM``: a LanguageModel that answers from a queue or a function of the
  prompt and records every call; it stands in for a real backend wherever a test
  checks control flow (retries, batching), not what a model learns. The real
  backend is exercised in tests/test_experience_e2e.py.
- ``ListBuffer``: brute-force cosine top-k over the conformance kit's hashed
  bag-of-words encoder; the real buffers are plugins with their own tests.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from dreamgym_core.records import Transition
from dreamgym_core.testing import BagOfWordsEncoder


class ScriptedLM:
    model_id = "scripted-lm"

    def __init__(self, answer: Callable[[str], str] | None = None, queue: Sequence[str] = ()) -> None:
        self.answer = answer
        self.queue = list(queue)
        self.calls: list[dict] = []

    def generate(self, *, prompts, max_new_tokens, temperature=1.0, stop=(), seed=None) -> list[str]:
        self.calls.append(
            {"prompts": list(prompts), "stop": list(stop), "seed": seed, "temperature": temperature, "max_new_tokens": max_new_tokens}
        )
        return [self.queue.pop(0) if self.queue else self.answer(p) for p in prompts]  # type: ignore[misc]


class ListBuffer:
    def __init__(self, transitions: Sequence[Transition] = ()) -> None:
        self.encoder = BagOfWordsEncoder()
        self.items: list[Transition] = []
        self.retrieve_calls = 0
        self.add(transitions=transitions)

    def _key(self, state: str, action: str) -> str:
        return f"{state} || {action}"

    def add(self, *, transitions: Sequence[Transition]) -> int:
        new = [t for t in transitions if t not in self.items]
        self.items.extend(new)
        return len(new)

    def retrieve(self, *, queries, k):
        self.retrieve_calls += 1
        if not self.items:
            return [[] for _ in queries]
        stored = self.encoder.encode(texts=[self._key(t.state, t.action) for t in self.items])
        asked = self.encoder.encode(texts=[self._key(s, a) for s, a in queries])
        # Rounded as the real buffers round, so ties go to the earlier item whatever the batch shape.
        order = np.argsort(-np.round(asked @ stored.T, 6), axis=1, kind="stable")[:, :k]
        return [[self.items[j] for j in row] for row in order]

    def sample(self, *, n, seed=None):
        return self.items[:n]

    def __len__(self) -> int:
        return len(self.items)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
