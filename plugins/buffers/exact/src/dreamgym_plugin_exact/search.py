"""Pure retrieval maths: cosine top-k over rows and distance rank merge."""

from __future__ import annotations

import numpy as np

__all__ = ["topk_cosine", "cosine_scores", "best_first", "merge_ranked", "embedding_text"]


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
        (indices, scores), each (m, k') with k' = min(k, eligible rows), best first; scores are
        float64, rounded to 6 decimals (see :func:`cosine_scores`).
    """
    n = matrix.shape[0]
    eligible = n if mask is None else int(mask.sum())
    k = min(k, eligible)
    if k <= 0 or queries.shape[0] == 0:
        return np.zeros((queries.shape[0], 0), dtype=np.int64), np.zeros((queries.shape[0], 0), dtype=np.float64)
    # Scores equal to 1e-6 are ties, and ties go to the earlier row: which of several
    # equally similar rows comes back must not depend on the CPU's summation order or on
    # numpy's SIMD partition (the hashing encoder gives many exact ties).
    scores = _scores(queries, matrix, k, mask)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(queries), 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    if k < n:
        part = np.sort(_earliest_of_ties(scores, part, part_scores), axis=1)
        part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def cosine_scores(queries: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(m, n) dot products of float32 ``queries`` and ``matrix`` rows, summed in float64 and rounded
    to 6 decimals.

    Summed in float32, a query alone (a matrix-vector kernel) and the same query in a batch (a
    matrix-matrix kernel, another summation order) differ in the last bits, enough to round a
    score near a 1e-6 boundary the other way: which rows came back depended on which queries
    shared the call (18 of 600 queries, in batches of 64). float64's error (~1e-16) lies that
    close to a boundary practically never (0 of the same 600)."""
    return np.round(queries.astype(np.float64) @ matrix.astype(np.float64).T, 6)


def _scores(queries: np.ndarray, matrix: np.ndarray, k: int, mask: np.ndarray | None) -> np.ndarray:
    """(m, n) scores for the top-k: :func:`cosine_scores` of every row that can reach a query's
    top k (ties at the k-th place included), -inf for the rest and for rows ``mask`` leaves out.

    Made float64 whole, the matrix cost 3 to 18 times float32's time (65536 rows). So rows are
    first scored in float32, whose error is at most ``d * 2**-24`` for unit rows whatever the
    summation order: a row more than twice that (and the rounding) below a query's float32 k-th
    score cannot reach its top k, nor tie at its k-th place."""
    fast = queries @ matrix.T
    if mask is not None:
        fast[:, ~mask] = -np.inf
    kth = np.partition(fast, fast.shape[1] - k, axis=1)[:, fast.shape[1] - k]
    margin = 4 * matrix.shape[1] * 2.0**-24 + 2e-6
    rows = np.flatnonzero((fast >= (kth - margin)[:, None]).any(axis=0))
    scores = np.full(fast.shape, -np.inf)
    # the rows some query of the batch needs: for the others of the batch, the rows below their cut
    scores[:, rows] = cosine_scores(queries, matrix[rows])
    if mask is not None:
        scores[:, ~mask] = -np.inf
    return scores


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
