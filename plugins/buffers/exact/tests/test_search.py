import numpy as np
import pytest

from dreamgym_plugin_exact import best_first, embedding_text, merge_ranked, topk_cosine


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_topk_matches_full_sort():
    rng = np.random.default_rng(0)
    data, queries = _unit(rng, 500, 16), _unit(rng, 7, 16)
    idx, scores = topk_cosine(queries, data, 5)
    full = np.argsort(-(queries @ data.T), axis=1)[:, :5]
    assert (idx == full).all()
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_ties_go_to_the_earliest_rows_in_rank_order():
    # Rows 3..9 tie with the query; argpartition alone may pick any 4 of them, and which
    # ones would differ between CPUs (SIMD partition) and summation orders.
    data = np.zeros((12, 4), dtype=np.float32)
    data[:, 1] = 1.0
    data[3:10] = [1.0, 0.0, 0.0, 0.0]
    data[11] = [0.6, 0.8, 0.0, 0.0]
    idx, scores = topk_cosine(np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32), data, 4)
    assert idx.tolist() == [[3, 4, 5, 6]] and scores.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    idx, _ = topk_cosine(np.array([[0.6, 0.8, 0.0, 0.0]], dtype=np.float32), data, 3)
    assert idx.tolist() == [[11, 0, 1]]  # 11 scores 1.0; rows 0-2 and 10 tie at 0.8
    idx, _ = topk_cosine(np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32), data, 8)
    assert idx.tolist() == [[3, 4, 5, 6, 7, 8, 9, 11]]  # the whole tie inside the top k


def test_topk_respects_mask_and_small_sets():
    rng = np.random.default_rng(1)
    data, queries = _unit(rng, 10, 8), _unit(rng, 3, 8)
    mask = np.zeros(10, dtype=bool)
    mask[[2, 5]] = True
    idx, _ = topk_cosine(queries, data, 4, mask)
    assert idx.shape == (3, 2) and set(idx.ravel()) <= {2, 5}
    idx, _ = topk_cosine(queries, data, 0)
    assert idx.shape == (3, 0)


def test_merge_ranked_orders_by_score_and_keeps_best_duplicate():
    a = (np.array([1, 2]), np.array([0.9, 0.5]))
    b = (np.array([3, 2]), np.array([0.7, 0.95]))
    assert merge_ranked([a, b], 3) == [2, 1, 3]


@pytest.mark.parametrize("state,action", [("You see a key.", "take key"), ("", "")])
def test_embedding_text_puts_action_first(state, action):
    text = embedding_text(state, action)
    assert text.startswith("action:") and action in text and state in text


def test_best_first_orders_by_score_then_earlier_row():
    rows = np.array([9, 4, 7, 2, 5])
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1], dtype=np.float32)
    got_rows, got_scores = best_first(rows, scores, 3)
    assert got_rows.tolist() == [4, 2, 7]
    assert got_scores.tolist() == [np.float32(0.9), np.float32(0.5), np.float32(0.5)]


def test_scores_within_rounding_of_each_other_tie_and_go_to_the_earlier_row():
    # row 1 beats row 0 by one float32 ulp: a summation-order difference, not a better match
    data = np.array([[0.8, 0.6], [np.nextafter(np.float32(0.8), np.float32(1)), 0.6]], dtype=np.float32)
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    assert (query @ data.T)[0, 1] > (query @ data.T)[0, 0]
    idx, scores = topk_cosine(query, data, 1)
    assert idx.tolist() == [[0]] and scores.tolist() == [[pytest.approx(0.8)]]


@pytest.mark.parametrize("k", [50, 299, 300])
def test_large_ties_come_back_in_row_order(k):
    # three score levels spread over 300 rows: more tied rows than a small sort keeps stable by accident
    levels = np.random.default_rng(0).integers(0, 3, 300)
    units = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    idx, _ = topk_cosine(np.array([[1.0, 0.0]], dtype=np.float32), units[levels], k)
    assert idx[0].tolist() == sorted(range(300), key=lambda i: (levels[i], i))[:k]
