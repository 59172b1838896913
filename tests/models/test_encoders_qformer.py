"""u2qt.models.qformer (the causal source masks, the Q-Former's causality over sources) and
u2qt.models.encoders (the tabular encoder without fields and with missing values).

Parameters come from `jax.eval_shape(module.init)` filled with numpy draws, and test jits compile
at XLA backend optimization level 0 (see tests/tiny_user_tokenizer.py).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from tiny_user_tokenizer import all_finite as _all_finite
from tiny_user_tokenizer import init_params as _init_params
from tiny_user_tokenizer import jit_o0 as _jit

from u2qt.models.encoders import TabularEncoder
from u2qt.models.qformer import CausalQFormer, causal_source_masks


# ----------------------------------------------------------------------------- Q-Former
def test_causal_source_masks():
    lengths = [2, 3, 1]
    token_mask = np.array([[1, 1, 1, 0, 1, 1], [1, 0, 1, 1, 1, 0]], bool)
    self_mask, cross_mask = causal_source_masks(2, lengths, jnp.asarray(token_mask))
    assert self_mask.shape == (1, 1, 6, 6) and cross_mask.shape == (2, 1, 6, 6)
    group = np.repeat(np.arange(3), 2)
    source = np.repeat(np.arange(3), lengths)
    np.testing.assert_array_equal(np.asarray(self_mask)[0, 0], group[:, None] >= group[None, :])
    for b in range(2):
        want = (group[:, None] >= source[None, :]) & token_mask[b][None, :]
        np.testing.assert_array_equal(np.asarray(cross_mask)[b, 0], want)
    # The first group sees only source 0; the last group every valid token.
    assert not np.asarray(cross_mask)[:, 0, :2, 2:].any()
    np.testing.assert_array_equal(np.asarray(cross_mask)[:, 0, -1], token_mask)


def test_qformer_is_causal_over_sources():
    qformer = CausalQFormer(num_sources=3, queries_per_source=2, dim=16, num_layers=2, num_heads=2)
    rng = np.random.default_rng(2)
    lengths = (3, 4, 2)
    tokens = [jnp.asarray(rng.standard_normal((2, n, 16)), jnp.float32) for n in lengths]
    masks = [jnp.ones((2, n), bool) for n in lengths]
    masks[1] = masks[1].at[:, -1].set(False)
    params = {"params": _init_params(qformer, tokens, masks, True)}
    run = _jit(lambda t: qformer.apply(params, t, masks, True))
    shared, groups = run(tokens)
    assert shared.shape == (2, 16) and groups.shape == (2, 3, 16)

    def changed(source, new):
        t = list(tokens)
        t[source] = new
        return np.abs(np.asarray(run(t)[1]) - np.asarray(groups)).max(axis=(0, 2))  # per group

    last = changed(2, tokens[2] + 1.0)
    assert last[0] == 0.0 and last[1] == 0.0 and last[2] > 1e-3, last
    first = changed(0, tokens[0] + 1.0)
    assert np.all(first > 1e-3), first
    # A masked token is invisible to every group.
    masked = changed(1, tokens[1].at[:, -1].add(5.0))
    assert np.all(masked == 0.0), masked


# ----------------------------------------------------------------------------- encoders
def test_tabular_encoder_without_fields():
    enc = TabularEncoder(cat_sizes=(), num_numeric=0, dim=8)
    args = (jnp.zeros((3, 0), jnp.int32), jnp.zeros((3, 0)), jnp.zeros((3, 0)))
    tokens, mask = _jit(enc.apply)({"params": _init_params(enc, *args)}, *args)
    assert tokens.shape == (3, 1, 8) and mask.shape == (3, 1)
    assert bool(mask.all()) and _all_finite(tokens)


def test_tabular_encoder_missing_values():
    enc = TabularEncoder(cat_sizes=(3, 4), num_numeric=2, dim=8)
    cat = jnp.array([[0, 2], [1, 0]], jnp.int32)
    num = jnp.array([[0.5, 7.0], [1.5, -2.0]])
    num_mask = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    params = {"params": _init_params(enc, cat, num, num_mask)}
    apply = _jit(enc.apply)
    tokens, mask = apply(params, cat, num, num_mask)
    assert tokens.shape == (2, 5, 8)  # source token + 2 categorical + 2 numeric
    # Missing categorical values are masked out; numeric tokens are always valid (a learned
    # "missing" embedding stands in for an absent value).
    np.testing.assert_array_equal(np.asarray(mask), [[1, 0, 1, 1, 1], [1, 1, 0, 1, 1]])
    # An absent numeric value does not leak into its token; a present one does.
    other, _ = apply(params, cat, num.at[:, 1].set(100.0).at[1, 0].set(-50.0), num_mask)
    np.testing.assert_array_equal(np.asarray(other), np.asarray(tokens))
    present, _ = apply(params, cat, num.at[0, 0].set(3.0), num_mask)
    assert np.abs(np.asarray(present)[0, 3] - np.asarray(tokens)[0, 3]).max() > 1e-4
    # A missing numeric field gets the same token in every row.
    np.testing.assert_allclose(np.asarray(tokens)[0, 4], np.asarray(tokens)[1, 4], atol=1e-6)
