"""The recommender task (u2qt.tasks.recommender): every variant end to end on Office through the loop."""
import json
import os

import numpy as np
import pytest
from conftest import REPO, shared_data

# Item-text embeddings (and TFDS files) are keyed by content: one persistent cache for every test
# run, so the sentence encoder runs once per machine, not once per test.
TEXT_CACHE = os.environ.get("U2QT_TEXT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "u2qt", "amazon")


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


# A tiny run that learns: 200 steps of batch 128 (≈ 5 epochs of Office's 4,905 sequences).
LEARN = {"train.steps": 200, "train.batch_size": 128, "train.eval_every": 100, "train.log_every": 100,
         "train.checkpoint_every": 200, "train.warmup_steps": 20}


def random_ranking(num_items: int) -> dict:
    """Expected Recall@10 / NDCG@10 of a ranking in random order (what an untrained model gives)."""
    return {"Recall@10": 10 / num_items, "NDCG@10": sum(1 / np.log2(r + 2) for r in range(10)) / num_items}


@pytest.mark.parametrize("variant", ["id", "unified,coldstart"])
def test_variant_learns_and_writes_test_metrics(variant, tmp_path, compile_cache):
    data = shared_data("amazon-office-2014")
    from u2qt.train.loop import run
    cfg = _config(variant, data, tmp_path, **LEARN)
    summary = run(cfg, str(tmp_path / "run"))
    saved = json.load(open(tmp_path / "run" / "summary.json"))
    test = saved["test"]
    # Trained on 5 epochs, the model must rank well above a random order of the 2,420 items.
    floor = random_ranking(2420)
    assert test["Recall@10"] >= 2.5 * floor["Recall@10"], test
    assert test["NDCG@10"] >= 2.5 * floor["NDCG@10"], test
    assert test["Recall@5"] <= test["Recall@10"] and test["NDCG@5"] <= test["NDCG@10"]
    assert test["cases"] == 4905
    assert summary["selected"]["metric"] == "valid_NDCG@10" and summary["selected"]["step"] in (100, 200)
    assert summary["selected"]["value"] == pytest.approx(
        max(r["valid_NDCG@10"] for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if r["split"] == "eval"))
    assert sum(b["cases"] for b in test["popularity_buckets"]) == 4905
    if "coldstart" in variant:
        assert test["cold_items"] == 121  # round(5% of 2420)
        assert 0 < test["cold_cases"] < 4905 and "cold_Recall@10" in test
        assert os.path.exists(tmp_path / "run" / "semantic_ids.parquet")


def test_semantic_with_fixed_codes_from_a_semantic_id_table(tmp_path, compile_cache):
    """Fixed codes read from a semantic-ID table flow into the model and are learned through.
    The table here is what a tokenizer gives before any training: residual k-means of the items'
    text embeddings (3 levels × 32). The model ranks well above a random order."""
    data = shared_data("amazon-office-2014")
    import jax
    from u2qt.data.lcrec import read_lcrec
    from u2qt.data.text import item_text_table
    from u2qt.kernels.codebook_assign import assign_residual
    from u2qt.quant.codebooks import residual_kmeans
    from u2qt.quant.semantic_ids import SemanticIds
    from u2qt.train.loop import run
    items = read_lcrec(data, max_description_chars=100)
    text = item_text_table(items.item_texts, TEXT_CACHE, norm="standardize")[1:]
    books = residual_kmeans(jax.numpy.asarray(text), 3, 32, jax.random.key(0), iters=10)
    codes, _ = assign_residual(jax.numpy.asarray(text), books)
    path = str(tmp_path / "semantic_ids.parquet")
    SemanticIds(items.item_ids, {"item": np.asarray(codes)}, {"item": 32}, "item").write(path)
    cfg = _config("semantic", data, tmp_path, **{"model.codes_path": path, "quantizer.kmeans_init": False, **LEARN})
    summary = run(cfg, str(tmp_path / "run"))
    floor = random_ranking(2420)
    assert summary["test"]["Recall@10"] >= 2.5 * floor["Recall@10"], summary["test"]
    assert summary["test"]["NDCG@10"] >= 2.5 * floor["NDCG@10"], summary["test"]
