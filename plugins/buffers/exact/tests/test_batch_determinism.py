"""Which rows come back for a query must not depend on the other queries of its retrieve() call."""

import numpy as np

import dreamgym_plugin_exact.search as search
from dreamgym_core.testing import make_transitions
from dreamgym_plugin_encoders import HashingConfig, HashingEncoder
from dreamgym_plugin_exact import ExactBuffer, ExactConfig, topk_cosine


def _queries(records):
    return [(t.state, t.action) for t in make_transitions(300, prefix="q")] + [(r.state + " x", r.action) for r in records[::10]]


def test_a_query_gets_the_same_rows_alone_as_in_a_batch():
    # Summed in float32, a query alone (matrix-vector kernel) and in a batch (matrix-matrix, another
    # summation order) rounded a score near a 1e-6 boundary apart: 18 of these 600 differed
    buffer = ExactBuffer(ExactConfig(), encoder=HashingEncoder(HashingConfig(dim=64)))
    records = make_transitions(3000, source="real")
    buffer.add(transitions=records)
    queries = _queries(records)
    together = [hits for start in range(0, len(queries), 64) for hits in buffer.retrieve(queries=queries[start : start + 64], k=4)]
    alone = [buffer.retrieve(queries=[query], k=4)[0] for query in queries]
    assert sum(a != b for a, b in zip(together, alone)) == 0


def test_the_top_k_is_that_of_every_row_scored_in_float64():
    # Only rows near a query's float32 k-th score are scored in float64: the same rows and scores
    # as scoring every one, with ties (many, from the hashing encoder) to the earliest rows
    encoder = HashingEncoder(HashingConfig(dim=64))
    records = make_transitions(3000, source="real")
    matrix = encoder.encode(texts=[f"{t.action} {t.state}" for t in records]).astype(np.float32)
    queries = encoder.encode(texts=[f"{a} {s}" for s, a in _queries(records)]).astype(np.float32)
    mask = np.arange(len(matrix)) % 7 != 3
    for k in (1, 4, 50):
        for rows in (None, mask):
            idx, scores = topk_cosine(queries, matrix, k, rows)
            full = search.cosine_scores(queries, matrix)
            if rows is not None:
                full[:, ~rows] = -np.inf
            want = np.lexsort((np.tile(np.arange(len(matrix)), (len(queries), 1)), -full), axis=1)[:, :k]
            assert (idx == want).all() and (scores == np.take_along_axis(full, want, axis=1)).all()
