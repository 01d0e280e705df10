import torch

from dreamgym_plugin_hf.text import IGNORE, cut_at_stop, keep_end, left_pad, right_pad, segment_labels


def test_cut_at_stop_takes_earliest_stop_and_excludes_it():
    assert cut_at_stop("a. b\nc", [".", "\n"]) == "a"
    assert cut_at_stop("a b\nc. d", [".", "\n"]) == "a b"
    assert cut_at_stop("no stop here", ["STOP", ""]) == "no stop here"
    assert cut_at_stop("STOP at start", ["STOP"]) == ""


def test_keep_end_keeps_most_recent_tokens():
    assert keep_end([1, 2, 3, 4], 2) == [3, 4]
    assert keep_end([1, 2], 5) == [1, 2]


def test_keep_end_can_keep_the_start_token():
    # a long prompt lost its BOS with its start: a Llama-style model never saw that in training
    assert keep_end([0, 1, 2, 3, 4], 3, keep_start=1) == [0, 3, 4]
    assert keep_end([0, 1, 2], 5, keep_start=1) == [0, 1, 2]
    assert keep_end([0, 1, 2, 3], 1, keep_start=1) == [0]
    ids, labels = segment_labels([([0, 7, 8], False), ([5, 6], True)], 4, keep_start=1)
    assert ids == [0, 8, 5, 6] and labels == [IGNORE, IGNORE, 5, 6]


def test_left_pad_aligns_rows_on_the_right():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_right_pad_ignores_padding_in_labels():
    ids, mask, labels = right_pad([([1, 2, 3], [IGNORE, 2, 3]), ([4], [4])], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert labels.tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]
    assert labels.dtype == torch.long


def test_segment_labels_masks_untrained_segments_exactly():
    ids, labels = segment_labels([([1, 2], False), ([3, 4], True), ([5], False), ([6], True)], limit=10)
    assert ids == [1, 2, 3, 4, 5, 6]
    assert labels == [IGNORE, IGNORE, 3, 4, IGNORE, 6]


def test_segment_labels_truncation_keeps_the_end():
    ids, labels = segment_labels([([1, 2, 3], False), ([4, 5], True)], limit=3)
    assert ids == [3, 4, 5]
    assert labels == [IGNORE, 4, 5]
