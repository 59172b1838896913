"""The downstream evaluation of user tokens: metrics by hand, inputs, the leakage guard."""

import numpy as np
import pandas as pd
import pytest

from u2qt.eval import downstream
from u2qt.quant.semantic_ids import SemanticIds


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


def test_token_features_decode_each_view_through_its_codebooks(tmp_path):
    # A semantic-ID table from elsewhere (no u2qt metadata), its level columns out of order.
    path = str(tmp_path / "semantic_ids.parquet")
    pd.DataFrame({"id": ["a", "b"], "shared_1": [1, 0], "shared_0": [0, 2], "text_0": [3, 0]}).to_parquet(path)
    tokens = SemanticIds.read(path)
    rng = np.random.default_rng(0)
    books = {"shared": rng.normal(size=(2, 3, 4)), "text": rng.normal(size=(1, 4, 2))}
    x = downstream.token_features(tokens, books)
    assert x.shape == (2, 4 + 2)
    # columns are matched to levels by name, not by their order in the table
    np.testing.assert_allclose(x[0, :4], books["shared"][0, 0] + books["shared"][1, 1], rtol=1e-6)
    np.testing.assert_allclose(x[1, :4], books["shared"][0, 2] + books["shared"][1, 0], rtol=1e-6)
    np.testing.assert_allclose(x[:, 4:], books["text"][0, [3, 0]], rtol=1e-6)


def test_head_learns_a_separable_task():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    fold = np.arange(600) % 10
    score = lambda logits, sel: downstream.auc(y[sel], logits[:, 0])
    val, test_logits = downstream.train_head(x, y, fold >= 3, fold == 2, fold <= 1, "sigmoid", score, 1,
                                             epochs=15, batch_size=64)
    assert val > 0.95 and downstream.auc(y[fold <= 1], test_logits[:, 0]) > 0.95


def test_cross_fit_scores_every_row_with_a_head_that_never_saw_it():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 4)).astype(np.float32)
    y = (x[:, 1] > 0).astype(np.float32)
    fold = np.arange(500) % 10
    seen = []
    real = downstream.train_head

    def spy(x_, y_, train, valid, test, *args, **kwargs):
        assert not (train & test).any() and not (valid & test).any() and not (train & valid).any()
        seen.append(test)
        return real(x_, y_, train, valid, test, *args, **kwargs)

    downstream.train_head, saved = spy, downstream.train_head
    try:
        out = downstream.cross_fit(x, y, fold, "sigmoid", lambda l, s: downstream.auc(y[s], l[:, 0]), 1, epochs=60)
    finally:
        downstream.train_head = saved
    assert len(seen) == downstream.CROSS_FITS
    np.testing.assert_array_equal(np.sum(seen, 0), np.ones(500))  # each row tested exactly once
    assert downstream.auc(y, out[:, 0]) > 0.95


def test_softmax_loss_averages_the_held_out_targets_and_skips_padding():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32))
    one = downstream._softmax_loss(logits, np.array([3]))
    several = downstream._softmax_loss(logits, np.array([[3, 2, 0]]))
    assert float(one) == pytest.approx(-np.log(0.4), rel=1e-5)
    assert float(several) == pytest.approx(-(np.log(0.4) + np.log(0.3)) / 2, rel=1e-5)


def test_future_ranks_one_case_per_held_out_event_history_excluded():
    logits = np.array([[0.0, 5.0, 4.0, 3.0, 2.0], [0.0, 1.0, 2.0, 3.0, 4.0]], np.float32)
    future = np.array([[3, 4], [1, 0]])
    history = np.array([[1, 0], [4, 0]])
    # user 0: item 1 excluded → item 3 has item 2 above it (rank 1), item 4 has 2, 3 above (rank 2);
    # user 1: item 4 excluded → item 1 has items 2, 3 above it (rank 2)
    np.testing.assert_array_equal(downstream.future_ranks(logits, future, history), [1, 2, 2])


def test_attribute_task_refuses_a_tokenizer_that_saw_the_attribute(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    workdir.mkdir()
    cfg = {"data": {"exclude_user_columns": []}}
    monkeypatch.setattr(downstream, "load_run", lambda w: (
        __import__("ml_collections").ConfigDict(cfg), None, None, None, None))
    with pytest.raises(ValueError, match="saw 'gender'"):
        downstream.evaluate_attribute(str(workdir), "gender", epochs=1)


def test_cli_needs_at_least_one_run(capsys):
    with pytest.raises(SystemExit) as e:
        downstream.main([])
    assert e.value.code == 2 and "--workdir" in capsys.readouterr().err


@pytest.mark.heavy
def test_attribute_workflow_on_any_data_set_trains_the_second_tokenizer_once(tmp_path, monkeypatch, capsys,
                                                                            compile_cache):
    """One command: a tokenizer run on "your own data" and --attribute COLUMN → the run without
    COLUMN is trained (through train.py, from the first run's config.json), then scored; a second
    call reuses it."""
    import json
    import os

    import pandas as pd

    from conftest import REPO
    import train as train_cli
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "data")
    member = rng.choice(["yes", "no"], 80)
    pd.DataFrame({"user_id": [f"u{i}" for i in range(80)], "member": member,
                  "age": rng.integers(18, 70, 80)}).to_csv(tmp_path / "data" / "users.csv", index=False)
    pd.DataFrame({"item_id": [f"i{i}" for i in range(30)], "text": [f"item {i}" for i in range(30)]}).to_csv(
        tmp_path / "data" / "items.csv", index=False)
    pd.DataFrame([(f"u{u}", f"i{int(rng.integers(30))}", 1_600_000_000 + u * 1000 + k * 60)
                  for u in range(80) for k in range(12)], columns=["user_id", "item_id", "timestamp"]).to_csv(
        tmp_path / "data" / "events.csv", index=False)
    monkeypatch.chdir(tmp_path)
    argv = ["--config", os.path.join(REPO, "configs", "default.py:runlocal"), "--workdir", "run",
            "--config.data.format=tables", "--config.data.path=data", "--config.train.steps=12",
            "--config.quantizer.kmeans_at_step=4", "--config.train.progress=False"]
    assert train_cli.main(argv) == 0
    capsys.readouterr()
    assert downstream.main(["--workdir", "run", "--attribute", "member", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "training the tokenizer again without 'member'" in out, out
    second = json.load(open(tmp_path / "run_without_member" / "config.json"))
    assert second["data"]["exclude_user_columns"] == ["member"]
    assert second["train"]["steps"] == 12  # the first run's config, not the config file's defaults
    results = json.load(open(tmp_path / "run" / "downstream.json"))
    assert set(results["member"]) == {"tokens", "continuous", "raw"}
    assert all(0.0 <= results["member"][k]["AUC"] <= 1.0 for k in results["member"])
    assert "| member | AUC |" in out and "genres: skipped" in out  # the table says why genres did not run
    assert downstream.main(["--workdir", "run", "--attribute", "member", "--epochs", "2"]) == 0
    assert "using the finished run run_without_member" in capsys.readouterr().out
