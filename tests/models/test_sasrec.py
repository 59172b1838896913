"""SASRec: shapes, causality, padding, the three item representations, the loss, and training."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from u2qt.data.sequences import leave_one_out, next_item_examples
from u2qt.eval.ranking import evaluate, make_eval_cases
from u2qt.models.sasrec import (MODES, SASRec, dropped_targets, item_logits, represent_items, sasrec_loss,
                                sasrec_scores, target_capacity)

NUM_ITEMS, MAX_LEN, D = 30, 8, 16
CODES = np.random.default_rng(0).integers(0, 5, size=(NUM_ITEMS + 1, 3))
# Tiny programs run once: skip XLA's backend optimizations, which cost more than they save here.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
# Every test feeds [2, MAX_LEN] inputs where it can: each new shape costs eager compilations.
ITEMS = jnp.array([[0, 0, 0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 30, 7, 8]])


def make(mode, **kw):
    return SASRec(num_items=NUM_ITEMS, d_model=D, num_layers=2, num_heads=2, dropout=0.1,
                  max_len=MAX_LEN, mode=mode, codes=None if mode == "id" else CODES, **kw)


@pytest.fixture(scope="module", params=MODES)
def model_and_params(request):
    model = make(request.param)
    return model, jax.jit(model.init, compiler_options=FAST_COMPILE)(jax.random.key(0), ITEMS)["params"]


def test_shapes_and_parameters(model_and_params):
    model, params = model_and_params
    hidden = model.apply({"params": params}, ITEMS)
    assert hidden.shape == (2, MAX_LEN, D) and hidden.dtype == jnp.float32
    assert np.all(np.asarray(hidden[0, :4]) == 0)  # padding positions are zeroed
    table = model.apply({"params": params}, method=SASRec.item_table)
    assert table.shape == (NUM_ITEMS + 1, D)
    scores = sasrec_scores(params, ITEMS, model)
    assert scores.shape == (2, NUM_ITEMS + 1)
    assert np.all(np.isneginf(scores[:, 0])) and np.all(np.isfinite(scores[:, 1:]))
    assert ("id_embedding" in params) == (model.mode in ("id", "unified"))
    if model.mode != "id":
        assert params["code_embedding"].shape == (3, 5, D)  # [C, K, d], K = codes.max() + 1
        assert "codes" not in str(jax.tree_util.tree_structure(params))  # a constant, not a param


def test_causality(model_and_params):
    model, params = model_and_params
    hidden = model.apply({"params": params}, ITEMS)
    for t in (4, 6, 7):
        changed = ITEMS.at[:, t].set(17)
        other = model.apply({"params": params}, changed)
        np.testing.assert_array_equal(other[:, :t], hidden[:, :t])
        assert not np.allclose(other[:, t:], hidden[:, t:])


def test_left_padding_does_not_change_the_last_state(model_and_params):
    model, params = model_and_params
    short = ITEMS[:, -3:]
    padded = jnp.pad(short, ((0, 0), (MAX_LEN - 3, 0)))  # the same histories padded to max_len
    np.testing.assert_allclose(model.apply({"params": params}, short)[:, -1],
                               model.apply({"params": params}, padded)[:, -1], atol=1e-5)
    with pytest.raises(ValueError, match="exceeds max_len"):
        model.apply({"params": params}, jnp.ones((1, MAX_LEN + 1), jnp.int32))


def test_item_representations_by_hand():
    rng = np.random.default_rng(1)
    id_table = rng.normal(size=(NUM_ITEMS + 1, 4))
    code_tables = rng.normal(size=(3, 5, 4))
    items = np.array([[7, 0], [30, 2]])
    semantic = sum(code_tables[c][CODES[items, c]] for c in range(3))
    np.testing.assert_allclose(represent_items(items, "id", id_table), id_table[items])
    np.testing.assert_allclose(represent_items(items, "semantic", None, code_tables, CODES), semantic,
                               rtol=1e-6)
    np.testing.assert_allclose(represent_items(items, "unified", id_table, code_tables, CODES),
                               id_table[items] + semantic, rtol=1e-6)


def test_modules_with_equal_codes_are_equal():
    assert make("semantic") == make("semantic") and hash(make("unified")) == hash(make("unified"))
    flipped = SASRec(num_items=NUM_ITEMS, mode="semantic", codes=CODES[::-1])
    assert flipped != SASRec(num_items=NUM_ITEMS, mode="semantic", codes=CODES)


def test_configuration_errors():
    x = jnp.ones((1, 3), jnp.int32)
    with pytest.raises(ValueError, match="mode must be one of"):
        make("hybrid").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"needs codes of shape \[num_items \+ 1 = 31, C\], got None"):
        SASRec(num_items=NUM_ITEMS, mode="semantic").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"got \(30, 3\)"):
        SASRec(num_items=NUM_ITEMS, mode="unified", codes=CODES[1:]).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 4\)"):
        make("semantic", codebook_size=4).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="not divisible"):
        SASRec(num_items=NUM_ITEMS, d_model=10, num_heads=3).init(jax.random.key(0), x)


def test_loss_is_full_softmax_cross_entropy(model_and_params):
    model, params = model_and_params
    batch = next_item_examples([np.array([3, 4, 5, 6, 9]), np.array([1, 30])], MAX_LEN)
    assert batch["inputs"].shape == ITEMS.shape
    loss = sasrec_loss(params, batch, model)
    hidden = model.apply({"params": params}, batch["inputs"])
    table = np.asarray(model.apply({"params": params}, method=SASRec.item_table), np.float64)
    expected = []
    for b, t in zip(*np.nonzero(batch["targets"])):
        logits = np.asarray(hidden[b, t], np.float64) @ table[1:].T  # items 1..I, no padding class
        expected.append(np.log(np.exp(logits).sum()) - logits[batch["targets"][b, t] - 1])
    assert len(expected) == 5
    np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)
    assert np.isneginf(item_logits(hidden, jnp.asarray(table, jnp.float32))[..., 0]).all()
    # With dropout the loss differs but stays finite. The module (codes included) is hashable,
    # so it can be a static argument.
    noisy = jax.jit(sasrec_loss, static_argnums=2, compiler_options=FAST_COMPILE)(
        params, batch, model, jax.random.key(3))
    assert np.isfinite(noisy) and noisy != loss


def test_capacity_scores_only_positions_with_a_target(model_and_params):
    model, params = model_and_params
    batch = next_item_examples([np.array([3, 4, 5, 6, 9]), np.array([1, 30])], MAX_LEN)  # 4 + 1 targets
    full = sasrec_loss(params, batch, model)
    for capacity in (5, 7):  # room for every target: the same loss, nothing dropped
        np.testing.assert_allclose(sasrec_loss(params, batch, model, capacity=capacity), full, rtol=1e-6)
        assert int(dropped_targets(jnp.asarray(batch["targets"]), capacity)) == 0
    # Room for 3: the first 3 targets in row order (row 0's first three) are scored, 2 dropped.
    kept = {k: v.copy() for k, v in batch.items()}
    kept["targets"][0, -1] = 0
    kept["targets"][1] = 0
    np.testing.assert_allclose(sasrec_loss(params, batch, model, capacity=3), sasrec_loss(params, kept, model),
                               rtol=1e-6)
    assert int(dropped_targets(jnp.asarray(batch["targets"]), 3)) == 2
    assert int(dropped_targets(jnp.asarray(batch["targets"]), None)) == 0
    # Sizing: mean + 6 sd of a batch's count, rounded up, never above B · T.
    targets = np.zeros((100, 20), np.int32)
    targets[:50, -4:] = 1  # half the rows have 4 targets: mean 2, sd 2 per row
    assert target_capacity(targets, 16, multiple=8) == 8 * int(np.ceil((16 * 2 + 6 * 4 * 2) / 8))  # 80
    assert target_capacity(targets, 2, multiple=8) == 24  # 4 + 6·√2·2 = 21 → 24, under B · T = 40
    assert target_capacity(targets, 1, multiple=64) == 20


def test_a_few_steps_reduce_the_loss_and_evaluate_runs(model_and_params):
    # Tiny data with a learnable rule: after item i comes item i + 1.
    rng = np.random.default_rng(2)
    sequences = [np.arange(s, s + n) for s, n in zip(rng.integers(1, 20, 24), rng.integers(4, 11, 24))]
    split = leave_one_out(sequences)
    batch = {k: jnp.asarray(v) for k, v in next_item_examples(split.train, MAX_LEN).items()}
    model, params = model_and_params
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    @partial(jax.jit, compiler_options=FAST_COMPILE)
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(sasrec_loss)(params, batch, model)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(16):  # each step returns the loss before its update
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.5, losses

    cases = make_eval_cases(split, "valid", max_history=MAX_LEN)
    metrics = evaluate(lambda b: sasrec_scores(params, b["history"], model), cases,
                       batch_size=ITEMS.shape[0])
    assert set(metrics) == {"Recall@5", "NDCG@5", "Recall@10", "NDCG@10"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
