"""Item sequences → what models train and are judged on.

Every recommender and item tokenizer here reads a user's history as a sequence of item indices
(1..I, 0 = padding), oldest first, and splits it the same way:

- ``leave_one_out``: per user, the last item is the test target, the second-to-last the
  validation target, the rest is training data; users with fewer than 3 items get no
  evaluation case (their whole sequence is training data).
- ``remove_cold_items``: a seeded random share of the items removed from every training
  sequence (cold-start evaluation; targets and histories are untouched).
- ``next_item_examples``: SASRec training rows, inputs s[:-1] → targets s[1:], left-padded.
- ``position_examples``: one row per position of the training sequences, with the history before
  it and a sequence neighbour (the item tokenizer's alignment terms).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LeaveOneOutSplit:
    sequences: list[np.ndarray]  # the full sequences of item indices, one per user
    train: list[np.ndarray]      # all but the last two items; the whole sequence if evaluated is False
    evaluated: np.ndarray        # bool [U]: the user has >= 3 items, hence a valid and a test case


@dataclasses.dataclass(frozen=True)
class ColdSplit:
    """The leave-one-out split with ``cold`` items (sorted indices) removed from its train part."""
    split: LeaveOneOutSplit
    cold: np.ndarray


def leave_one_out(sequences: Sequence[np.ndarray]) -> LeaveOneOutSplit:
    """Last item test, second-to-last validation, the rest train; < 3 items: train only."""
    sequences = [np.asarray(s, dtype=np.int32) for s in sequences]
    evaluated = np.array([s.size >= 3 for s in sequences], dtype=bool)
    train = [s[:-2] if ok else s for s, ok in zip(sequences, evaluated)]
    return LeaveOneOutSplit(sequences=sequences, train=train, evaluated=evaluated)


def remove_cold_items(split: LeaveOneOutSplit, num_items: int, fraction: float, seed: int) -> ColdSplit:
    """Picks round(fraction · I) items with ``seed`` and removes them from every training sequence."""
    count = int(round(fraction * num_items))
    cold = np.sort(np.random.default_rng(seed).choice(np.arange(1, num_items + 1), count, replace=False))
    if count == 0:
        return ColdSplit(split, cold.astype(np.int32))
    train = [s[~np.isin(s, cold)] for s in split.train]
    return ColdSplit(dataclasses.replace(split, train=train), cold.astype(np.int32))


def next_item_examples(sequences: Sequence[np.ndarray], max_len: int, windows: int = 1) -> dict[str, np.ndarray]:
    """Training pairs: inputs = s[:-1], targets = s[1:] in windows of `max_len` steps, left-padded
    with 0. Every sequence gives its last window (an all-zero row when it has < 2 items); with
    ``windows`` > 1 up to that many (0: all), each the `max_len` steps before the previous one and
    holding at least one target (SASRec's rows for sequences longer than its history).
    "sequence" [N] is each row's sequence index."""
    if windows < 0:
        raise ValueError(f"next_item_examples: windows={windows} must be >= 0 (0: all)")
    spans = []  # (sequence, start, stop) of the items one row covers
    for row, seq in enumerate(sequences):
        end = len(seq)
        for w in range(windows or max(end, 1)):
            start = max(end - (max_len + 1), 0)
            if w and end - start < 2:
                break
            spans.append((row, start, end))
            end = start + 1  # the next window's last target is this one's first input
    inputs = np.zeros((len(spans), max_len), dtype=np.int32)
    targets = np.zeros_like(inputs)
    for r, (row, start, end) in enumerate(spans):
        seq = np.asarray(sequences[row])[start:end]
        n = max(seq.size - 1, 0)
        if n:
            inputs[r, max_len - n:] = seq[:-1]
            targets[r, max_len - n:] = seq[1:]
    sequence = np.asarray([row for row, _, _ in spans], np.int32)
    return {"inputs": inputs, "targets": targets, "sequence": sequence}


def position_examples(train: Sequence[np.ndarray], max_history: int, seed: int) -> dict[str, np.ndarray]:
    """One row per position of the training sequences: history [N, H] (left-padded), target [N],
    cooc [N] (the previous or next item of the same sequence, picked with ``seed``; 0 if none)."""
    rng = np.random.default_rng(seed)
    rows = sum(len(s) for s in train)
    history = np.zeros((rows, max_history), np.int32)
    target = np.zeros(rows, np.int32)
    cooc = np.zeros(rows, np.int32)
    r = 0
    for seq in train:
        seq = np.asarray(seq, np.int32)
        n = seq.size
        for j in range(n):
            before = seq[max(0, j - max_history):j]
            history[r, max_history - before.size:] = before
            target[r] = seq[j]
            neighbours = [seq[k] for k in (j - 1, j + 1) if 0 <= k < n]
            cooc[r] = neighbours[rng.integers(len(neighbours))] if neighbours else 0
            r += 1
    return {"history": history, "target": target, "cooc": cooc}
