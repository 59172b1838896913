"""u2qt.data.sequences: cold-item removal, SASRec training pairs, and the item tokenizer's per-position rows."""
import numpy as np
import pytest

from u2qt.data.sequences import leave_one_out, next_item_examples, position_examples, remove_cold_items


def test_cold_start_removes_exactly_the_chosen_items_from_training():
    rng = np.random.default_rng(1)
    sequences = [rng.integers(1, 41, size=rng.integers(1, 9)) for _ in range(60)]
    split = leave_one_out(sequences)
    cold = remove_cold_items(split, 40, 0.05, seed=3)
    assert len(cold.cold) == 2 and len(set(cold.cold.tolist())) == 2
    assert np.array_equal(cold.cold, remove_cold_items(split, 40, 0.05, seed=3).cold)  # seeded
    for before, after in zip(split.train, cold.split.train):
        np.testing.assert_array_equal(after, before[~np.isin(before, cold.cold)])
        assert not np.isin(after, cold.cold).any()
    assert cold.split.sequences is split.sequences  # evaluation targets and histories are untouched
    assert len(remove_cold_items(split, 40, 0.0, seed=3).cold) == 0


def test_next_item_examples():
    batch = next_item_examples([np.array([1, 2, 3]), np.arange(1, 8), np.array([5])], max_len=4)
    assert batch["inputs"].tolist() == [[0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 0]]
    assert batch["targets"].tolist() == [[0, 0, 2, 3], [4, 5, 6, 7], [0, 0, 0, 0]]


def test_windows_cover_every_target_once_and_each_ends_where_the_next_begins():
    seqs = [np.arange(1, 12), np.array([5]), np.array([1, 2]), np.arange(20, 29)]
    rows = next_item_examples(seqs, max_len=4, windows=0)
    assert rows["sequence"].tolist() == [0, 0, 0, 1, 2, 3, 3]
    assert rows["inputs"].tolist()[:3] == [[7, 8, 9, 10], [3, 4, 5, 6], [0, 0, 1, 2]]
    for s, seq in enumerate(seqs):  # every next-item pair of each sequence is in exactly one row
        mine = rows["sequence"] == s
        pairs = sorted((int(a), int(b)) for a, b in zip(rows["inputs"][mine].ravel(), rows["targets"][mine].ravel()) if b)
        assert pairs == sorted(zip(seq[:-1].tolist(), seq[1:].tolist()))
    one = next_item_examples(seqs, max_len=4)  # windows 1: the last window of each, as before
    assert one["sequence"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(one["inputs"], rows["inputs"][[0, 3, 4, 5]])
    two = next_item_examples(seqs, max_len=4, windows=2)
    assert two["sequence"].tolist() == [0, 0, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="windows=-1"):
        next_item_examples(seqs, max_len=4, windows=-1)


def test_training_rows_use_each_position_with_its_past_and_a_neighbour():
    ex = position_examples([np.array([5, 6, 7]), np.array([9])], max_history=2, seed=0)
    np.testing.assert_array_equal(ex["target"], [5, 6, 7, 9])
    np.testing.assert_array_equal(ex["history"], [[0, 0], [0, 5], [5, 6], [0, 0]])
    assert ex["cooc"][0] == 6 and ex["cooc"][1] in (5, 7) and ex["cooc"][2] == 6 and ex["cooc"][3] == 0
