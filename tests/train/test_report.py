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


def test_a_federated_plot_names_its_loss_and_counts_rounds(tmp_path, monkeypatch):
    import matplotlib.axes

    _metrics(tmp_path / "m.jsonl", ["valid_Recall@10"])
    labels = []
    real = matplotlib.axes.Axes.set_xlabel
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel", lambda ax, s, **kw: labels.append(s) or real(ax, s, **kw))
    titles = plot_run(str(tmp_path / "p.png"), str(tmp_path / "m.jsonl"), x_label="round",
                      loss_title="clients' training loss (mean over local steps)")
    assert titles[0] == "clients' training loss (mean over local steps)"
    assert labels and set(labels) == {"round"}


def test_a_tokenizer_plot_shows_code_health_and_one_histogram_per_level(tmp_path):
    _metrics(tmp_path / "m.jsonl", ["usage_item_0", "usage_item_1", "collision_rate_item"])
    codes = np.random.default_rng(0).integers(0, 8, size=(50, 2))
    titles = plot_run(str(tmp_path / "p.png"), str(tmp_path / "m.jsonl"), codes_by_view={"item": codes},
                      num_codes={"item": 8})
    assert titles[:4] == ["training loss", "loss terms", "quantization error per view", "at each evaluation: item codes"]
    assert [t.split(":")[0] for t in titles[4:]] == ["item level 0", "item level 1"]


def test_resolve_epochs_sets_the_steps_and_shortens_what_would_not_fit():
    import os

    from conftest import REPO
    from u2qt import config as config_lib
    from u2qt.train.step import resolve_epochs
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "amazon.py") + ":lcrec,items")
    lines = []
    resolve_epochs(cfg, rows=10_000, log=lines.append)  # 3.5 epochs at batch 256: 137 steps
    assert cfg.train.steps == 137
    assert (cfg.train.warmup_steps, cfg.quantizer.kmeans_at_step, cfg.train.log_every, cfg.train.eval_every,
            cfg.train.checkpoint_every) == (13, 13, 6, 34, 68)
    assert lines == ["schedule: train.epochs=3.5 over 10,000 training rows at batch 256 → train.steps=137, "
                     "train.warmup_steps=13 (was 100), quantizer.kmeans_at_step=13 (was 200), train.log_every=6 "
                     "(was 50), train.eval_every=34 (was 500), train.checkpoint_every=68 (was 500)"]
    big = config_lib.load_config_file(os.path.join(REPO, "configs", "amazon.py") + ":lcrec,items")
    resolve_epochs(big, rows=10_000_000, log=lines.append)  # long enough: only the steps change
    assert big.train.steps == 136_719 and big.train.eval_every == 500 and lines[-1].endswith("train.steps=136,719")
    plain = config_lib.load_config_file(os.path.join(REPO, "configs", "amazon.py") + ":beauty,items")
    resolve_epochs(plain, rows=10, log=lines.append)  # train.epochs = 0: nothing changes, nothing logged
    assert plain.train.steps == 2000 and len(lines) == 2


def test_the_printed_report_names_counts_as_integers_and_shows_the_popularity_buckets():
    from u2qt.train.report import summary_text
    summary = {"wall_seconds": 12.3, "selected": {"step": 250, "metric": "valid_NDCG@10", "value": 0.05},
               "test": {"Recall@10": 0.1234, "NDCG@10": 0.0567, "cases": 4905,
                        "popularity_buckets": [{"Recall@10": 0.3, "NDCG@10": 0.2, "cases": 358},
                                               {"Recall@10": 0.1, "NDCG@10": 0.05, "cases": 4547}]}}
    text = summary_text(summary, "runs/x")
    assert "test: Recall@10 0.1234, NDCG@10 0.0567, cases 4,905" in text
    assert ("test by target popularity (head → tail, equal shares of training interactions): Recall@10 0.3000 / "
            "0.1000; NDCG@10 0.2000 / 0.0500 (358 / 4,547 cases)") in text
    assert "selected the step-250 parameters by valid_NDCG@10 = 0.0500" in text
    # A federated summary counts rounds ("rounds" beside "steps"), and so does its selection line.
    assert "selected the round-250 parameters" in summary_text(dict(summary, steps=300, rounds=300), "runs/x")
