"""TIGER through the one train loop on an LC-Rec directory: it learns, and reads other IDs."""
import json
import math
import os

import numpy as np
import pytest

from conftest import REPO
from u2qt import config as config_lib

ITEMS = 100


def _walks(root, users=200, length=8, seed=0, min_length=None):
    """Each user walks the items in a fixed cycle: the next item is always (last mod 100) + 1
    (the leave-one-out test item too), so a model that learns the rule ranks it first."""
    rng = np.random.default_rng(seed)
    path = os.path.join(root, "walk")
    os.makedirs(path)
    lengths = rng.integers(min_length or length, length + 1, users)
    inter = {f"u{u}": [str((s + k) % ITEMS) for k in range(n)]
             for u, (s, n) in enumerate(zip(rng.integers(0, ITEMS, users), lengths))}
    items = {str(i): {"title": f"thing {i}", "description": ""} for i in range(ITEMS)}
    json.dump(inter, open(os.path.join(path, "Walk.inter.json"), "w"))
    json.dump(items, open(os.path.join(path, "Walk.item.json"), "w"))
    return path


def _config(data, **overrides):
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "tiger.py") + ":lcrec,random,runlocal")
    overrides = {"data.path": data, "train.epochs": 30.0, "train.lr": 3e-3, **overrides}
    for key, value in overrides.items():
        config_lib.apply_override(cfg, key, value if isinstance(value, str) else repr(value))
    return cfg


@pytest.mark.heavy
def test_tiger_learns_the_walk_and_beats_an_untrained_model_by_far(tmp_path, compile_cache):
    from u2qt.train.loop import run
    data = _walks(str(tmp_path))
    summary = run(_config(data), str(tmp_path / "run"))
    test = summary["test"]
    # Untrained / random: Recall@10 ≈ 10/100. The rule is learnable from the training positions.
    assert test["Recall@10"] >= 0.6, test
    assert test["NDCG@10"] >= 0.4, test
    assert test["cases"] == 200 and len(test["popularity_buckets"]) == 3
    assert 0.0 <= test["invalid_rate_unconstrained@10"] <= 1.0 and test["invalid_rate_cases"] == 64
    untrained = run(_config(data, **{"train.epochs": 0.0, "train.steps": 1, "train.lr": 1e-9,
                                     "train.warmup_steps": 0, "train.eval_every": 1}), str(tmp_path / "untrained"))
    assert untrained["test"]["Recall@10"] <= 0.3 and test["Recall@10"] >= untrained["test"]["Recall@10"] + 0.3
    rows = 200 * (8 - 2 - 1)  # positions with an item before them, validation and test items held out
    assert summary["steps"] == math.ceil(30 * rows / 64)
    assert os.path.getsize(tmp_path / "run" / "training.png") > 0


def test_tiger_reads_a_letter_index_file_and_refuses_ids_for_missing_items(tmp_path, compile_cache):
    from u2qt.tasks.generative import GenerativeRetrievalTask
    data = _walks(str(tmp_path), users=20)
    rng = np.random.default_rng(0)
    codes = {str(i): [f"<a_{rng.integers(8)}>", f"<b_{rng.integers(8)}>", f"<c_{i}>"] for i in range(ITEMS)}
    json.dump(codes, open(tmp_path / "Walk.index.json", "w"))
    task = GenerativeRetrievalTask(_config(data, **{"model.codes_path": str(tmp_path / "Walk.index.json")}),
                                   str(tmp_path / "cache"), log=lambda m: None)
    # Row i + 1 is item id str(i) (sorted by the reader): its ID is the file's codes + de-dup token.
    row = task.data.item_ids.index("7") + 1
    assert task.constants["codes"][row, 2] == 7 and task.constants["codes"].shape == (ITEMS + 1, 4)
    del codes["7"]
    json.dump(codes, open(tmp_path / "Walk.index.json", "w"))
    with pytest.raises(ValueError, match="1 of 100 ids have no semantic ID"):
        GenerativeRetrievalTask(_config(data, **{"model.codes_path": str(tmp_path / "Walk.index.json")}),
                                str(tmp_path / "cache"), log=lambda m: None)


def test_tiger_without_an_id_table_names_the_key(tmp_path):
    from u2qt.tasks.generative import GenerativeRetrievalTask
    data = _walks(str(tmp_path), users=20)
    with pytest.raises(ValueError, match="model.codes_path is empty"):
        GenerativeRetrievalTask(_config(data, **{"model.codes_path": ""}), str(tmp_path / "cache"), log=lambda m: None)


def test_length_bucketed_decoding_ranks_exactly_as_the_full_window(tmp_path):
    import jax
    import jax.numpy as jnp
    from u2qt.tasks.generative import GenerativeRetrievalTask
    data = _walks(str(tmp_path), users=40, length=12, min_length=3)  # histories of 1..10 items
    ranks = {}
    for buckets in ("()", "(2, 5, 20)"):
        task = GenerativeRetrievalTask(_config(data, **{"eval.length_buckets": buckets}), str(tmp_path / "cache"),
                                       log=lambda m: None)
        constants = {k: jnp.asarray(v) for k, v in task.constants.items()}
        params = task.init(jax.random.key(0), {k: v[:2] for k, v in task.examples.items()}, constants)
        ranks[buckets] = task.ranks(params, constants, task.valid_cases)
    np.testing.assert_array_equal(ranks["()"], ranks["(2, 5, 20)"])
    assert (ranks["()"] < ITEMS).any()  # some targets are decoded at all (the comparison is not of two empties)


def test_tigers_serving_function_gives_the_decoded_items(tmp_path):
    import jax
    import jax.numpy as jnp
    from u2qt.tasks.generative import GenerativeRetrievalTask
    data = _walks(str(tmp_path), users=30)
    task = GenerativeRetrievalTask(_config(data), str(tmp_path / "cache"), log=lambda m: None)
    constants = {k: jnp.asarray(v) for k, v in task.constants.items()}
    params = task.init(jax.random.key(0), {k: v[:2] for k, v in task.examples.items()}, constants)
    serve = task.serving_functions()["top_k"]
    history, users = task.test_cases.history[:5], task.test_cases.users[:5]
    buckets = task.constants["user_bucket"][users]
    scores, items = serve.fn(params, constants, jnp.asarray(history), jnp.asarray(buckets))
    want_items, want_logp, _, valid = task.decode(params, constants, history, users)
    np.testing.assert_array_equal(np.asarray(items), np.asarray(want_items))
    np.testing.assert_allclose(np.asarray(scores), np.asarray(want_logp), rtol=1e-6)
    assert bool(valid.all()) and items.shape == (5, task.cfg.eval.beam)
    assert (np.diff(np.asarray(scores), axis=1) <= 1e-6).all()  # best first
    shapes = jax.eval_shape(serve.fn, params, constants, *serve.abstract_inputs(3))  # any batch size traces
    assert shapes[1].shape == (3, task.cfg.eval.beam)


def test_a_tiger_run_exports_and_serves_the_decoded_items(tmp_path, compile_cache):
    import jax.numpy as jnp
    from u2qt import serving
    from u2qt.export import export_run, trained_params
    from u2qt.tasks.generative import GenerativeRetrievalTask
    from u2qt.train.loop import run
    data = _walks(str(tmp_path), users=30)
    cfg = _config(data, **{"train.epochs": 0.0, "train.steps": 4, "data.cache_dir": str(tmp_path / "cache")})
    run(cfg, str(tmp_path / "run"))
    manifest = export_run(str(tmp_path / "run"), str(tmp_path / "bundle"), platforms=("cpu",), log=lambda m: None)
    assert manifest["functions"]["top_k"]["outputs"][1]["shape"] == ["batch", cfg.eval.beam]
    bundle = serving.load(str(tmp_path / "bundle"))
    task = GenerativeRetrievalTask(cfg, str(tmp_path / "cache"), log=lambda m: None)
    params, _ = trained_params(str(tmp_path / "run"))
    constants = {k: jnp.asarray(v) for k, v in task.constants.items()}
    history, users = task.test_cases.history[:7], task.test_cases.users[:7]
    scores, items = bundle("top_k", history, task.constants["user_bucket"][users])
    want_items, want_logp, _, _ = task.decode(params, constants, history, users)
    np.testing.assert_array_equal(np.asarray(items), np.asarray(want_items))
    np.testing.assert_allclose(np.asarray(scores), np.asarray(want_logp), rtol=1e-5, atol=1e-5)
    ids = json.load(open(bundle.file("items.json")))  # item index → the data set's item id
    assert ids[0] is None and ids[1:] == task.data.item_ids
    # From the data set's ids: histories of item ids and the user ids (hashed as in training).
    top, id_scores, report = bundle.recommend([[ids[i] for i in row if i] for row in history],
                                              users=[task.data.user_ids[u] for u in users])
    assert top == [[ids[i] if i else None for i in row] for row in np.asarray(items).tolist()]
    np.testing.assert_array_equal(id_scores, np.asarray(scores))
    assert report["unknown_items"] == 0
    with pytest.raises(serving.BundleError, match="reads the user too"):
        bundle.recommend([[ids[1]]])
    check = bundle.self_check()["top_k"]
    assert check["equal"] and check["rows"] == min(64, len(task.test_cases.history))
