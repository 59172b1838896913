"""training.png: the panels each kind of task gets."""
import json

import numpy as np

from u2qt.train.report import plot_run


def _metrics(path, eval_keys):
    with open(path, "w") as f:
        for step in (10, 20, 30):
            f.write(json.dumps({"step": step, "split": "train", "loss": 3.0 / step, "rec": 2.0 / step,
                                "recon": 1.0 / step, "qerr_item": 0.1}) + "\n")
            f.write(json.dumps({"step": step, "split": "eval", **{k: step / 100 for k in eval_keys}}) + "\n")


def test_a_recommender_plot_shows_validation_curves_and_popularity_buckets(tmp_path):
    _metrics(tmp_path / "m.jsonl", ["valid_Recall@10", "valid_NDCG@10"])
    buckets = [{"Recall@10": 0.2, "NDCG@10": 0.1, "cases": 40}, {"Recall@10": 0.05, "NDCG@10": 0.02, "cases": 60}]
    titles = plot_run(str(tmp_path / "p.png"), str(tmp_path / "m.jsonl"), title="run",
                      test={"popularity_buckets": buckets}, selected={"step": 20})
    assert titles == ["training loss", "loss terms", "validation metrics at each evaluation",
                      "test, by target popularity"]
    assert open(tmp_path / "p.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_tokenizer_plot_shows_code_health_and_one_histogram_per_level(tmp_path):
    _metrics(tmp_path / "m.jsonl", ["usage_item_0", "usage_item_1", "collision_rate_item"])
    codes = np.random.default_rng(0).integers(0, 8, size=(50, 2))
    titles = plot_run(str(tmp_path / "p.png"), str(tmp_path / "m.jsonl"), codes_by_view={"item": codes},
                      num_codes={"item": 8})
    assert titles[:4] == ["training loss", "loss terms", "quantization error per view", "at each evaluation: item codes"]
    assert [t.split(":")[0] for t in titles[4:]] == ["item level 0", "item level 1"]
