"""Reviewed bug of the MiniLM encoder: a lone surrogate in a text."""

from __future__ import annotations

import numpy as np


def test_a_lone_surrogate_is_encoded_as_the_replacement_character(minilm):
    # before: the tokenizer raised a TypeError on "\ud83d" (half of an emoji), and a buffer's whole
    # retrieval failed with it; the hashing encoder took such text all along
    texts = ["You are in the kitchen \ud83d", "a\ud800b", "\udfff"]
    vectors = minilm.encode(texts=texts)
    replaced = minilm.encode(texts=["You are in the kitchen \ufffd", "a\ufffdb", "\ufffd"])
    assert vectors.shape == (3, minilm.dim) and np.isfinite(vectors).all()
    np.testing.assert_allclose(vectors, replaced, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_valid_text_is_encoded_as_before(minilm):
    for text in ["take the apple", "café 😀 日本語 \ufffd", ""]:  # given to the model unchanged
        np.testing.assert_array_equal(minilm.encode(texts=[text]), minilm._encode_batch([text]))
