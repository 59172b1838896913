"""EfficientRec through the one train loop on an LC-Rec directory: it learns, prunes, and encodes
users it never trained on without touching a parameter."""
import json
import os
import re

import numpy as np
import pytest

from conftest import REPO
from u2qt import config as config_lib
from u2qt.errors import DataError

TYPES, BLOCK = 10, 10  # users of type t touch only the items of block t
ITEMS = TYPES * BLOCK


def _typed_users(root, users=300, length=8, seed=0):
    """Each user has a type and walks their type's block of 10 items in a fixed cycle, from a
    random start, without repeats: the test item is a block item the history does not hold. A
    model that learns the blocks ranks the block first (Recall@10 ≈ 1); an untrained one ranks
    the history's own items first and the target at random among the other 93 (≈ 0.03)."""
    rng = np.random.default_rng(seed)
    path = os.path.join(root, "typed")
    os.makedirs(path)
    kinds, starts = rng.integers(0, TYPES, users), rng.integers(0, BLOCK, users)
    inter = {f"u{u}": [str(k * BLOCK + (s + j) % BLOCK) for j in range(length)]
             for u, (k, s) in enumerate(zip(kinds, starts))}
    items = {str(i): {"title": f"thing {i}"} for i in range(ITEMS)}
    json.dump(inter, open(os.path.join(path, "Typed.inter.json"), "w"))
    json.dump(items, open(os.path.join(path, "Typed.item.json"), "w"))
    return path


def _config(data, variant="lcrec,runlocal", **overrides):
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "efficientrec.py") + ":" + variant)
    overrides = {"data.path": data, "train.epochs": 0.0, "train.steps": 150, "train.lr": 3e-3, "train.warmup_steps": 10,
                 "train.log_every": 50, "train.eval_every": 75, "train.checkpoint_every": 150,
                 "model.clusters": TYPES, "eval.top_clusters": 2, "eval.shortlist_sizes": (10, 20), **overrides}
    for key, value in overrides.items():
        config_lib.apply_override(cfg, key, value if isinstance(value, str) else repr(value))
    return cfg


def _task(cfg, tmp_path):
    import jax.numpy as jnp
    from u2qt.tasks.efficientrec import EfficientRecTask
    task = EfficientRecTask(cfg, str(tmp_path / "cache"), log=lambda m: None)
    return task, {k: jnp.asarray(v) for k, v in task.constants.items()}


@pytest.mark.heavy
def test_efficientrec_learns_the_types_beats_random_and_serves_unseen_users_as_well(tmp_path, compile_cache):
    from u2qt.train.loop import run
    data = _typed_users(str(tmp_path))
    summary = run(_config(data), str(tmp_path / "run"))
    test = summary["test"]
    # Random / untrained: Recall@10 ≈ 10/100; the blocks are learnable from the training rows.
    assert test["Recall@10"] >= 0.6, test
    untrained = run(_config(data, **{"train.steps": 1, "train.lr": 1e-9, "train.warmup_steps": 0,
                                     "train.eval_every": 1, "train.checkpoint_every": 1}), str(tmp_path / "untrained"))
    assert untrained["test"]["Recall@10"] <= 0.3 and test["Recall@10"] >= untrained["test"]["Recall@10"] + 0.3
    # 10% of the users never trained; they are encoded from their histories as well as the others.
    assert test["unseen_cases"] == 30 and test["seen_cases"] == 270
    assert test["unseen_Recall@10"] >= 0.5, test
    # Two clusters' shortlists of 20 items: most targets are among at most 40% of the catalogue.
    pruned = {row["shortlist"]: row for row in test["pruned"]}
    assert pruned[20]["fraction_scored"] <= 0.4 + 1e-6 and pruned[20]["Recall@10"] >= 0.5, pruned
    assert test["popularity"]["Recall@10"] <= 0.3


def test_a_new_user_needs_no_parameter_update(tmp_path):
    import jax
    task, constants = _task(_config(_typed_users(str(tmp_path), users=40)), tmp_path)
    params = task.init(jax.random.key(0), None, constants)
    before = jax.tree.map(np.array, params)
    history = np.array([[0, 0, 3, 7, 5], [0, 0, 0, 0, 42]], np.int32)  # users that are in no data
    history = np.pad(history, ((0, 0), (task.cfg.data.max_history - 5, 0)))
    users = np.asarray(task.encode_users(params, constants, history))
    assert users.shape == (2, task.cfg.model.dim) and np.isfinite(users).all()
    # The same user again, alone: the same vector (nothing about them was stored).
    np.testing.assert_allclose(np.asarray(task.encode_users(params, constants, history[1:])), users[1:], rtol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, params))


def test_bad_inputs_to_the_user_encoder_get_a_clear_message(tmp_path):
    import jax
    task, constants = _task(_config(_typed_users(str(tmp_path), users=40)), tmp_path)
    params = task.init(jax.random.key(0), None, constants)
    h = task.cfg.data.max_history
    with pytest.raises(DataError, match="have no interactions"):
        task.encode_users(params, constants, np.zeros((1, h), np.int32))
    with pytest.raises(DataError, match=f"item index {ITEMS + 5} is not in the catalogue 1..{ITEMS}"):
        task.encode_users(params, constants, np.full((1, h), ITEMS + 5, np.int32))


def test_unseen_users_are_in_no_training_row_edge_or_count(tmp_path):
    task, _ = _task(_config(_typed_users(str(tmp_path), users=100), **{"data.unseen_fraction": 0.2}), tmp_path)
    unseen = np.flatnonzero(task.unseen)
    assert len(unseen) == 20
    assert not np.isin(task.examples["user"], unseen).any()
    assert not np.isin(task.constants["edge_user"], unseen).any()
    assert all(task.split.train[u].size == 0 for u in unseen)
    assert np.isin(unseen, task.test_cases.users).all()  # ... but they are evaluated


def test_the_id_table_baseline_has_a_row_per_user(tmp_path):
    import jax
    data = _typed_users(str(tmp_path), users=40)
    counts = {}
    for variant in ("lcrec,runlocal", "lcrec,idtable,runlocal"):
        task, constants = _task(_config(data, variant), tmp_path)
        params = task.init(jax.random.key(0), None, constants)
        counts[variant] = sum(x.size for x in jax.tree.leaves(params))
        batch = {k: jax.numpy.asarray(v[:4]) for k, v in task.examples.items()}
        loss, aux = task.loss(params, batch, constants, jax.random.key(1), 0)  # its loss traces and is finite
        assert np.isfinite(float(loss)) and set(aux["metrics"]) >= {"next_item", "u2i_nce", "cluster_assign"}
    assert counts["lcrec,idtable,runlocal"] - counts["lcrec,runlocal"] == 40 * 32


@pytest.mark.parametrize("variant", ["ml1m", "beauty", "office", "lcrec", "ml1m,idtable", "office,idtable",
                                     "lcrec,runlocal", "lcrec,idtable,runlocal"])
def test_every_efficientrec_variant_is_valid_and_bad_values_are_named(variant):
    from u2qt import defaults
    from u2qt.models.efficientrec import MEMBERSHIPS
    from u2qt.tasks.efficientrec import READERS
    assert defaults.READERS == READERS and defaults.MEMBERSHIPS == MEMBERSHIPS  # the config's choices are the code's
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "efficientrec.py") + ":" + variant)
    if "lcrec" in variant:
        cfg.data.path = "some/lcrec/dir"
    config_lib.validate(cfg, defaults.CONSTRAINTS, defaults.cross_key_problems)
    for key, value, message in (("eval.top_clusters", "99", "eval.top_clusters=99 must be <= model.clusters"),
                                ("data.reader", "'csv'", "data.reader='csv' must be one of 'lcrec', 'movielens'"),
                                ("loss.view_crop", "0.0", "loss.view_crop=0.0 must be in (0, 1]")):
        bad = cfg.copy_and_resolve_references()
        config_lib.apply_override(bad, key, value)
        with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
            config_lib.validate(bad, defaults.CONSTRAINTS, defaults.cross_key_problems)
