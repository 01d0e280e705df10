"""Pure retrieval maths: cosine top-k over rows and distance rank merge."""

from __future__ import annotations

import numpy as np

__all__ = ["topk_cosine", "best_first", "merge_ranked", "embedding_text"]


def embedding_text(state: str, action: str) -> str:
    """The text phi embeds for a (state, action) pair, for stored items and queries alike.

    The action comes first so that it survives truncation of long states by the
    encoder's token cap; a fixed separator keeps the two parts apart.
    """
    return f"action: {action.strip()}\nstate: {state.strip()}"


def topk_cosine(
    queries: np.ndarray, matrix: np.ndarray, k: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of ``matrix`` by dot product (cosine for unit rows) for each query.

    Args:
        queries: (m, d) float32, L2-normalised.
        matrix: (n, d) float32, L2-normalised.
        k: neighbours wanted; fewer come back when fewer rows are eligible.
        mask: optional (n,) bool, True where a row may be returned.

    Returns:
        (indices, scores), each (m, k') with k' = min(k, eligible rows), best first.
    """
    n = matrix.shape[0]
    eligible = n if mask is None else int(mask.sum())
    k = min(k, eligible)
    if k <= 0 or queries.shape[0] == 0:
        return np.zeros((queries.shape[0], 0), dtype=np.int64), np.zeros((queries.shape[0], 0), dtype=np.float32)
    # Scores equal to 1e-6 are ties, and ties go to the earlier row: which of several
    # equally similar rows comes back must not depend on the CPU's summation order or on
    # numpy's SIMD partition (the hashing encoder gives many exact ties).
    scores = np.round(queries @ matrix.T, 6)
    if mask is not None:
        scores[:, ~mask] = -np.inf
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(queries), 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    if k < n:
        part = np.sort(_earliest_of_ties(scores, part, part_scores), axis=1)
        part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def _earliest_of_ties(scores: np.ndarray, part: np.ndarray, part_scores: np.ndarray) -> np.ndarray:
    """``part`` with the rows scoring exactly the k-th best score (the cut) replaced by the
    earliest such rows; only queries whose tie at the cut spills past k are touched."""
    k, cut = part.shape[1], part_scores.min(axis=1)
    spills = np.flatnonzero((scores == cut[:, None]).sum(axis=1) > (part_scores == cut[:, None]).sum(axis=1))
    if not len(spills):
        return part
    part = part.copy()
    for i in spills:
        above = np.flatnonzero(scores[i] > cut[i])
        part[i] = np.concatenate([above, np.flatnonzero(scores[i] == cut[i])[: k - len(above)]])
    return part


def best_first(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (rows, scores) by score, ties to the earlier row: ``topk_cosine``'s order
    for candidates gathered elsewhere (an approximate index, several row ranges)."""
    order = np.lexsort((rows, -scores))[:k]
    return rows[order], scores[order]


def merge_ranked(lists: list[tuple[np.ndarray, np.ndarray]], k: int) -> list[int]:
    """Distance rank merge: the k best ids by score over several (ids, scores) lists.

    An id present in several lists keeps its best score; ties keep list order.
    """
    best: dict[int, float] = {}
    for ids, scores in lists:
        for i, s in zip(ids.tolist(), scores.tolist()):
            if s > best.get(i, -np.inf):
                best[i] = s
    return sorted(best, key=lambda i: -best[i])[:k]
