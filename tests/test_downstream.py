"""The downstream evaluation of user tokens: metrics by hand, inputs, the leakage guard."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from u2qt.eval import downstream


def test_auc_by_hand():
    # positives score 0.8, 0.4; negatives 0.5, 0.1 → pairs won: (0.8>0.5, 0.8>0.1, 0.4>0.1) = 3 of 4.
    assert downstream.auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.5, 0.1])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half
    assert downstream.auc(np.array([1, 0]), np.array([0.3, 0.3])) == pytest.approx(0.5)
    assert np.isnan(downstream.auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_macro_auc_skips_labels_with_one_class():
    labels = np.array([[1, 1], [0, 1], [1, 1]])
    scores = np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3]])
    assert downstream.macro_auc(labels, scores) == pytest.approx(1.0)


def test_user_split_is_deterministic_and_covers_all_folds():
    ids = [str(i) for i in range(2000)]
    a, b = downstream.user_split(ids), downstream.user_split(ids)
    np.testing.assert_array_equal(a, b)
    assert set(a) == set(range(10))
    assert 0.15 < np.mean(a <= 1) < 0.25  # test fold ≈ 20%


def test_token_features_one_hot_per_view_and_level():
    tokens = pd.DataFrame({"user_id": ["a", "b"], "shared_0": [0, 2], "shared_1": [1, 1], "text_0": [3, 0]})
    books = {"shared": np.zeros((2, 3, 4)), "text": np.zeros((1, 4, 2))}
    x = downstream.token_features(tokens, books)
    assert x.shape == (2, 3 + 3 + 4)
    np.testing.assert_array_equal(x[0], [1, 0, 0, 0, 1, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(x.sum(1), [3, 3])


def test_head_learns_a_separable_task():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    fold = np.arange(600) % 10
    score = lambda logits, sel: downstream.auc(y[sel], logits[:, 0])
    val, test_logits = downstream.train_head(x, y, fold, "sigmoid", score, epochs=15, batch_size=64)
    assert val > 0.95 and downstream.auc(y[fold <= 1], test_logits[:, 0]) > 0.95


def test_attribute_task_refuses_a_tokenizer_that_saw_the_attribute(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    workdir.mkdir()
    cfg = {"data": {"exclude_user_columns": []}}
    monkeypatch.setattr(downstream, "load_run", lambda w: (
        __import__("ml_collections").ConfigDict(cfg), None, None, None, None))
    with pytest.raises(ValueError, match="saw 'gender'"):
        downstream.evaluate_attribute(str(workdir), "gender", epochs=1)
