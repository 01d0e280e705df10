"""Pure maths of the reward-entropy curriculum (tests import these directly)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["task_value", "synthetic_quota", "sampling_weights", "kmeans", "nearest", "stream_key", "SAMPLING_STREAM", "PROPOSAL_STREAM"]

# The random streams of one run, told apart by a leading non-zero tag. numpy pads a seed
# sequence's entropy with zeros, so the keys [seed, draws] and [seed, draws, 0] were one stream:
# the first variation proposals after a batch replayed the next batch's draws.
SAMPLING_STREAM, PROPOSAL_STREAM = 1, 2


def stream_key(stream: int, *keys: int) -> list[int]:
    """The entropy of one random stream (``np.random.default_rng(stream_key(...))``): the tag
    first, so two streams' keys differ in their first word whatever the zero padding, and none
    equals k-means' key, the bare seed, but for another seed."""
    return [stream, *keys]


def task_value(rewards: Sequence[float]) -> float:
    """Population variance of a group's outcome rewards, ``(1/n) sum (r_i - mean)^2``.

    Equals p(1-p) for binary rewards: 0 when all succeed or all fail, 0.25 at p = 0.5.
    Non-finite rewards are ignored; an empty group has value 0. All-equal rewards give
    exactly 0: ``np.var([0.7] * 3)`` is 1.2e-32 (the mean rounds), which would pass a
    threshold of 0 and take the whole greedy share of ``sampling_weights``. "Equal" is up to
    float rounding (``math.isclose`` at 1e-12, relative or absolute): ``[0.1 + 0.2, 0.3]``
    are two rewards of 0.3, summed in another order.
    """
    finite = [float(r) for r in rewards if math.isfinite(r)]
    if not finite or math.isclose(min(finite), max(finite), rel_tol=1e-12, abs_tol=1e-12):
        return 0.0
    return float(np.var(finite))


def synthetic_quota(share: float, n: int) -> int:
    """At most ``floor(share * n)`` synthetic tasks in a batch of ``n``."""
    return int(math.floor(share * n + 1e-9))


def sampling_weights(values: Sequence[float], exploration: float) -> np.ndarray:
    """Probabilities proportional to value, mixed with a uniform share ``exploration``.

    Every task keeps a non-zero probability; all-zero values give a uniform draw.
    """
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    uniform = np.full(len(v), 1.0 / len(v))
    greedy = v / v.sum() if v.sum() > 0 else uniform
    p = (1.0 - exploration) * greedy + exploration * uniform + 1e-12
    return p / p.sum()


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (Euclidean) of each row."""
    d = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    return d.argmin(axis=1)


def kmeans(x: np.ndarray, k: int, *, seed: int, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic k-means (k-means++ init from ``seed``): (labels, centroids)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float64)
    k = max(1, min(k, len(x)))
    centroids = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = ((x[:, None, :] - np.asarray(centroids)[None]) ** 2).sum(-1).min(axis=1)
        probs = d / d.sum() if d.sum() > 0 else np.full(len(x), 1.0 / len(x))
        centroids.append(x[rng.choice(len(x), p=probs)])
    c = np.asarray(centroids)
    labels = nearest(x, c)
    for _ in range(iters):
        c = np.stack([x[labels == j].mean(axis=0) if (labels == j).any() else c[j] for j in range(k)])
        new = nearest(x, c)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels, c
