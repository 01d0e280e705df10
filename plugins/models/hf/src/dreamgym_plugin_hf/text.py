"""Pure token and text helpers (no model): truncation, padding, stops, SFT masks."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["IGNORE", "cut_at_stop", "keep_end", "left_pad", "right_pad", "segment_labels"]

#: Label value that torch's cross-entropy (and transformers' loss) ignores.
IGNORE = -100


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string (stop excluded)."""
    cut = len(text)
    for s in stop:
        if s:
            at = text.find(s)
            if 0 <= at < cut:
                cut = at
    return text[:cut]


def keep_end(ids: list[int], limit: int, *, keep_start: int = 0) -> list[int]:
    """The last ``limit`` tokens: long prompts keep their most recent context. ``keep_start``:
    that many leading tokens (the tokenizer's BOS) stay, and the cut takes the rest from the
    text after them: a model trained with BOS at position 0 always sees it there."""
    if len(ids) <= limit:
        return ids
    head = ids[: min(keep_start, limit)]
    rest = limit - len(head)
    return head + (ids[len(ids) - rest :] if rest > 0 else [])


def left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for generation."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def right_pad(
    rows: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` for training."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, lab) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
    return ids, mask, labels


def segment_labels(pieces: Sequence[tuple[list[int], bool]], limit: int, *, keep_start: int = 0) -> tuple[list[int], list[int]]:
    """Concatenate tokenised segments; labels copy trained tokens and IGNORE the rest.

    Each segment is tokenised on its own by the caller, so the mask falls exactly on
    segment boundaries. Over-long examples keep their end (where targets usually are),
    and their first ``keep_start`` tokens (the BOS, as :func:`keep_end`).
    """
    ids: list[int] = []
    labels: list[int] = []
    for tokens, train in pieces:
        ids.extend(tokens)
        labels.extend(tokens if train else [IGNORE] * len(tokens))
    return keep_end(ids, limit, keep_start=keep_start), keep_end(labels, limit, keep_start=keep_start)
