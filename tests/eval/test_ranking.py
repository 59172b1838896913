"""The evaluation protocol: leave-one-out split, eval cases, full-ranking metrics, batching, buckets."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from u2qt.data.sequences import leave_one_out
from u2qt.eval.ranking import (bucket_by_popularity, evaluate, evaluate_ranks, full_ranking_metrics,
                               item_counts, make_eval_cases, metrics_by_bucket, metrics_from_ranks,
                               target_ranks)

SEQUENCES = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8]), np.array([9, 10]), np.array([], int)]


def test_leave_one_out_by_hand():
    split = leave_one_out(SEQUENCES)
    assert [t.tolist() for t in split.train] == [[1, 2, 3], [6], [9, 10], []]
    assert split.evaluated.tolist() == [True, True, False, False]

    valid = make_eval_cases(split, "valid", max_history=2)
    assert valid.users.tolist() == [0, 1]
    assert valid.history.tolist() == [[2, 3], [0, 6]]  # left-padded, most recent last
    assert valid.targets.tolist() == [4, 7]
    assert len(valid) == 2

    test = make_eval_cases(split, "test", max_history=4)
    assert test.history.tolist() == [[1, 2, 3, 4], [0, 0, 6, 7]]  # includes the validation item
    assert test.targets.tolist() == [5, 8]

    default = make_eval_cases(split, "test")
    assert default.history.shape == (2, 20) and default.history[0, -4:].tolist() == [1, 2, 3, 4]
    assert (default.history[0, :-4] == 0).all()
    with pytest.raises(ValueError, match="which"):
        make_eval_cases(split, "train")


# A 5-item catalogue; column 0 is padding and must never be ranked (hence its huge score).
SCORES = np.array([
    [9.0, 0.5, 0.9, 0.1, 0.7, 0.3],  # target 4 (0.7): only item 2 is higher -> rank 1
    [9.0, 0.5, 0.9, 0.1, 0.7, 0.3],  # target 3 (0.1): all four others are higher -> rank 4
    [9.0, 0.2, 0.2, 0.2, 0.2, 0.2],  # target 1, all tied: pessimistic rank 4, optimistic rank 0
    [9.0, 0.4, 0.9, 0.4, 0.1, 0.4],  # target 5 (0.4) tied with 1 and 3, below 2: ranks 3 / 1
], dtype=np.float32)
TARGETS = np.array([4, 3, 1, 5])


def test_ranks_by_hand():
    assert target_ranks(SCORES, TARGETS).tolist() == [1, 4, 4, 3]
    assert target_ranks(SCORES, TARGETS, ties="optimistic").tolist() == [1, 4, 0, 1]
    with pytest.raises(ValueError, match="ties"):
        target_ranks(SCORES, TARGETS, ties="random")


def test_metrics_by_hand_with_k_boundaries():
    ranks = [1, 4, 4, 3]
    got = full_ranking_metrics(SCORES, TARGETS, ks=(1, 2, 4, 5))
    g1, g3, g4 = 1 / math.log2(3), 1 / math.log2(5), 1 / math.log2(6)
    expected = {
        "Recall@1": 0.0, "NDCG@1": 0.0,
        "Recall@2": 1 / 4, "NDCG@2": g1 / 4,              # rank 1 < 2 counts; rank 1 = k - 1
        "Recall@4": 2 / 4, "NDCG@4": (g1 + g3) / 4,       # rank 4 = k does not count
        "Recall@5": 4 / 4, "NDCG@5": (g1 + g4 + g4 + g3) / 4,
    }
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert metrics_from_ranks(ranks, ks=(1, 2, 4, 5)) == got
    default = full_ranking_metrics(SCORES, TARGETS)
    assert list(default) == ["Recall@5", "NDCG@5", "Recall@10", "NDCG@10"]
    assert default["Recall@10"] == 1.0 and default["NDCG@10"] == pytest.approx(expected["NDCG@5"])
    optimistic = full_ranking_metrics(SCORES, TARGETS, ks=(1,), ties="optimistic")
    assert optimistic == {"Recall@1": 0.25, "NDCG@1": 0.25}
    # A constant scorer must not look perfect: every target ranks last.
    flat = full_ranking_metrics(np.zeros((3, 6)), np.array([1, 3, 5]), ks=(4, 5))
    assert flat["Recall@4"] == 0.0 and flat["Recall@5"] == 1.0


def test_exclude_history():
    history = np.array([[2, 0, 0], [0, 0, 3], [2, 3, 0], [2, 5, 1]])
    # row 0: item 2 removed -> rank 0. row 1: the target itself in the history is never removed.
    # row 2: two tied competitors removed -> 2. row 3: 2 and 1 removed, target 5 kept -> 1.
    assert target_ranks(SCORES, TARGETS, jnp.asarray(history)).tolist() == [0, 4, 2, 1]
    got = full_ranking_metrics(SCORES, TARGETS, ks=(1,), exclude=history)
    assert got["Recall@1"] == 0.25


def test_nan_scores_and_bad_targets():
    scores = np.array([[0.0, np.nan, 1.0, 2.0], [0.0, 1.0, np.nan, 2.0]], np.float32)
    assert target_ranks(scores, np.array([2, 2])).tolist() == [1, 2]  # NaN counts as -inf
    with pytest.raises(ValueError, match=r"targets must lie in 1\.\.3"):
        full_ranking_metrics(scores, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"targets must lie in 1\.\.3"):
        full_ranking_metrics(scores, np.array([1, 4]))
    with pytest.raises(ValueError, match="no evaluation cases"):
        metrics_from_ranks(np.array([], int))


def test_ranks_match_brute_force_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 12)).astype(np.float32)  # many ties
    targets = rng.integers(1, 12, size=50)
    exclude = rng.integers(0, 12, size=(50, 3))
    for ties in ("pessimistic", "optimistic"):
        for ex in (None, exclude):
            expected = []
            for b in range(50):
                t = targets[b]
                others = [j for j in range(1, 12) if j != t and (ex is None or j not in ex[b])]
                above = [j for j in others if (scores[b, j] >= scores[b, t] if ties == "pessimistic"
                                               else scores[b, j] > scores[b, t])]
                expected.append(len(above))
            got = target_ranks(scores, targets, None if ex is None else jnp.asarray(ex), ties=ties)
            assert got.tolist() == expected


def test_batched_evaluator_equals_unbatched():
    rng = np.random.default_rng(1)
    num_items, dim = 40, 8
    item_vectors = rng.normal(size=(num_items + 1, dim)).astype(np.float32)
    sequences = [rng.integers(1, num_items + 1, size=rng.integers(1, 12)) for _ in range(23)]
    cases = make_eval_cases(leave_one_out(sequences), "test", max_history=5)
    seen_rows = []

    def score_fn(batch):
        seen_rows.append(batch["history"].shape[0])
        summary = jnp.asarray(item_vectors)[batch["history"]].sum(axis=1)  # [b, d]
        return jnp.round(summary @ jnp.asarray(item_vectors).T)            # rounded: ties occur

    full = score_fn({"user": cases.users, "history": cases.history})
    for exclude_history in (False, True):
        exclude = cases.history if exclude_history else None
        expected_ranks = np.asarray(target_ranks(full, cases.targets, exclude))
        expected = full_ranking_metrics(full, cases.targets, ks=(1, 5, 10), exclude=exclude)
        for batch_size in (1, 4, 7, len(cases), 64):
            seen_rows.clear()
            ranks = evaluate_ranks(score_fn, cases, batch_size, exclude_history=exclude_history)
            np.testing.assert_array_equal(ranks, expected_ranks)
            assert set(seen_rows) == {batch_size}  # fixed batch shape, never more rows
            got = evaluate(score_fn, cases, batch_size, ks=(1, 5, 10), exclude_history=exclude_history)
            assert got == expected


def test_popularity_buckets():
    counts = item_counts([np.array([1, 1, 2, 3]), np.array([1, 4, 5, 2]), np.array([], int)], 6)
    assert counts.tolist() == [0, 3, 2, 1, 1, 1, 0]
    # Interaction mass 8, most popular first: item 1 (3), 2 (2), 3, 4, 5 (1 each), 6 unseen.
    # Mass before each: 0, 3, 5, 6, 7 -> shares 0, .375, .625, .75, .875; unseen -> last bucket.
    targets = np.array([1, 2, 3, 4, 5, 6])
    assert bucket_by_popularity(counts, targets, 2).tolist() == [0, 0, 1, 1, 1, 1]
    assert bucket_by_popularity(counts, targets, 4).tolist() == [0, 1, 2, 3, 3, 3]
    assert bucket_by_popularity(counts, targets, 1).tolist() == [0] * 6

    ranks = np.array([0, 7, 3, 20, 1, 4])
    rows = metrics_by_bucket(ranks, bucket_by_popularity(counts, targets, 4), 5, ks=(5,))
    assert [r["cases"] for r in rows] == [1, 1, 1, 3, 0]
    assert rows[0]["Recall@5"] == 1.0 and rows[1]["Recall@5"] == 0.0
    assert rows[3]["Recall@5"] == pytest.approx(2 / 3)
    assert math.isnan(rows[4]["Recall@5"]) and math.isnan(rows[4]["NDCG@5"])
