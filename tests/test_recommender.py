"""The recommender task: cold-start removal, and every variant end to end on Office through the loop."""
import json
import os

import numpy as np
import pytest
from conftest import REPO, shared_data

# Item-text embeddings (and TFDS files) are keyed by content: one persistent cache for every test
# run, so the sentence encoder runs once per machine, not once per test.
TEXT_CACHE = os.environ.get("U2QT_TEXT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "u2qt", "amazon")

from u2qt.eval.ranking import leave_one_out
from u2qt.model.recommender import remove_cold_items


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


def _config(variant, data, tmp_path, **overrides):
    from u2qt import config as config_lib
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "amazon.py") + f":office,{variant},runlocal")
    cfg.unlock()
    cfg.data.path = data
    cfg.data.cache_dir = TEXT_CACHE
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


@pytest.mark.parametrize("variant", ["id", "unified,coldstart"])
def test_variant_trains_and_writes_test_metrics(variant, tmp_path, compile_cache):
    data = shared_data("amazon-office-2014")
    from u2qt.train.loop import run
    cfg = _config(variant, data, tmp_path)
    summary = run(cfg, str(tmp_path / "run"))
    saved = json.load(open(tmp_path / "run" / "summary.json"))
    test = saved["test"]
    for k in ("Recall@5", "Recall@10", "NDCG@5", "NDCG@10"):
        assert 0.0 <= test[k] <= 1.0
    assert test["cases"] == 4905
    assert summary["selected"]["metric"] == "valid_NDCG@10" and summary["selected"]["step"] in (3, 6)
    assert sum(b["cases"] for b in test["popularity_buckets"]) == 4905
    if "coldstart" in variant:
        assert test["cold_items"] == 121  # round(5% of 2420)
        assert 0 < test["cold_cases"] < 4905 and "cold_Recall@10" in test
        assert os.path.exists(tmp_path / "run" / "item_codes.parquet")


def test_semantic_with_fixed_codes_from_an_item_table(tmp_path, compile_cache):
    data = shared_data("amazon-office-2014")
    from u2qt.model.item_tokenizer import write_item_table
    from u2qt.train.loop import run
    codes = np.random.default_rng(0).integers(0, 32, size=(2420, 3))
    path = str(tmp_path / "item_codes.parquet")
    write_item_table(path, [str(i) for i in range(2420)], codes)
    cfg = _config("semantic", data, tmp_path, **{"model.codes_path": path, "quantizer.kmeans_init": False})
    summary = run(cfg, str(tmp_path / "run"))
    assert 0.0 <= summary["test"]["NDCG@10"] <= 1.0
