"""u2qt.model (encoders, causal Q-Former, U2QT) and u2qt_objective on a tiny batch.

The model is the `configs/default.py:runlocal` one. XLA compiles dominate the run time on CPU, so
each function of the model is compiled once: every forward pass goes through `forward`, and all
objective variants plus the gradient through `objective_runs` (XLA merges their identical
forward passes). Parameters come from `jax.eval_shape(model.init)` (the real tree and shapes,
nothing compiled) filled with numpy draws at initializer scale: compiling the initializers would
cost as much as the forward pass. Random keys are "rbg" keys: the tests do not depend on the
generator, and threefry doubles the compile time. Test jits compile at XLA backend optimization
level 0 (`_jit`): the arithmetic is the same and compiling takes about half as long.
"""
from __future__ import annotations

import copy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from u2qt.config import apply_override, load_config_file
from u2qt.model.encoders import TabularEncoder
from u2qt.model.qformer import CausalQFormer, causal_source_masks
from u2qt.model.u2qt import U2QT, ModelSpec, crop_view, full_view, u2qt_objective

ROOT = Path(__file__).resolve().parents[1]
CAT_SIZES = (3, 5)  # vocabulary size + 1 per field (id 0 = missing)
NUM_NUMERIC = 2
NUM_ITEMS = 12
MAX_EVENTS = 8
TEXT_DIM = 384
LENGTHS = (8, 5, 2, 1, 0, 3)  # includes users with one and with no events


def _jit(fn, **kwargs):
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


def _config(**overrides):
    cfg = load_config_file(f"{ROOT / 'configs' / 'default.py'}:runlocal")
    for key, value in overrides.items():
        apply_override(cfg, key, value)
    return cfg


def _batch(seed=0, lengths=LENGTHS):
    rng = np.random.default_rng(seed)
    b = len(lengths)
    length = np.asarray(lengths, np.int32)
    valid_pos = np.arange(MAX_EVENTS)[None] < length[:, None]
    cat = np.stack([rng.integers(0, size, b) for size in CAT_SIZES], 1).astype(np.int32)
    cat[0] = 0  # all categorical fields missing
    num_mask = rng.integers(0, 2, (b, NUM_NUMERIC)).astype(np.float32)
    num_mask[1] = 1.0
    return {
        "user_index": np.arange(b, dtype=np.int32),
        "cat": cat,
        "num": (rng.standard_normal((b, NUM_NUMERIC)) * num_mask).astype(np.float32),
        "num_mask": num_mask,
        "items": np.where(valid_pos, rng.integers(1, NUM_ITEMS + 1, (b, MAX_EVENTS)), 0).astype(np.int32),
        "event_feats": (rng.standard_normal((b, MAX_EVENTS, 5)) * valid_pos[..., None]).astype(np.float32),
        "length": length,
    }


def _item_text(seed=1):
    return np.random.default_rng(seed).standard_normal((NUM_ITEMS + 1, TEXT_DIM)).astype(np.float32)


def _all_finite(tree):
    return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(tree)))


def _init_params(module, *args, seed=0):
    """The parameters ``module.init`` would create (same tree, shapes, dtypes), without compiling
    its initializers: Dense kernels ~ N(0, 1/fan_in), LayerNorm scales 1, biases 0, every other
    table (embeddings, queries, codebooks) ~ N(0, 0.1²)."""
    shapes = jax.eval_shape(lambda key: module.init({"params": key}, *args), jax.random.key(0))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "bias":
            return np.zeros(leaf.shape, leaf.dtype)
        if name == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        std = 0.1
        if name == "kernel":  # attention's output kernel is [heads, head_dim, out]
            std = 1 / np.sqrt(np.prod(leaf.shape[:-1]) if path[-2].key == "out" else leaf.shape[0])
        return (std * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(lambda path, leaf: jnp.asarray(fill(path, leaf)), shapes)


@pytest.fixture(scope="module")
def cfg():
    return _config()


@pytest.fixture(scope="module")
def model(cfg):
    return U2QT(ModelSpec(CAT_SIZES, NUM_NUMERIC, NUM_ITEMS, MAX_EVENTS, TEXT_DIM), cfg)


@pytest.fixture(scope="module")
def params(model):
    return _init_params(model, full_view(_batch()), _item_text())


@pytest.fixture(scope="module")
def forward(model):
    """One compiled deterministic pass: the model's outputs and its tokens for a full view."""

    @_jit
    def run(params, batch, item_text, quantize_on):
        view = full_view(batch)
        out = model.apply({"params": params}, view, item_text, quantize_on=quantize_on)
        return out, model.apply({"params": params}, view, item_text, method=U2QT.tokens)

    def forward(params, batch, item_text, quantize_on=True):
        return jax.device_get(run(params, batch, item_text, quantize_on))  # numpy: no eager op per check

    return forward


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


# ----------------------------------------------------------------------------- U2QT
def test_init_param_tree_and_apply(cfg, params, forward):
    # `params` has exactly the tree of model.init (traced by jax.eval_shape in the fixture).
    q, m = cfg.quantizer, cfg.model
    assert set(params) >= {"tabular", "behaviour", "text", "qformer", "shared_proj", "behaviour_proj", "cf_proj",
                           "codebooks_shared", "text_head", "num_head"} | {f"view_proj_{s}" for s in m.sources}
    assert params["behaviour"]["item_embedding"]["embedding"].shape == (NUM_ITEMS + 1, m.dim)
    assert params["codebooks_shared"].shape == (q.shared_levels, q.shared_codes, m.shared_dim)
    for s in m.sources:
        assert params[f"codebooks_{s}"].shape == (q.source_levels, q.source_codes, m.source_dim)
    assert _all_finite(params)
    out, _ = forward(params, _batch(), _item_text())
    b = len(LENGTHS)
    assert out["h"].shape == (b, m.shared_dim)
    assert {s: v.shape for s, v in out["views"].items()} == {s: (b, m.source_dim) for s in m.sources}
    assert out["behaviour_repr"].shape == (b, m.shared_dim)
    assert out["quantized"]["shared"].codes.shape == (b, q.shared_levels)
    assert out["item_table"].shape == (NUM_ITEMS + 1, m.dim)
    cat_logits, num_pred = out["recon"]["tabular"]
    assert [x.shape for x in cat_logits] == [(b, size + 1) for size in CAT_SIZES]
    assert num_pred.shape == (b, NUM_NUMERIC)
    assert out["recon"]["text"].shape == (b, TEXT_DIM)
    assert _all_finite(out)
    # Deterministic: the same input gives the same output.
    again, _ = forward(params, _batch(), _item_text())
    np.testing.assert_array_equal(np.asarray(again["h"]), np.asarray(out["h"]))


def test_user_without_events_is_finite(params, forward):
    batch = _batch(lengths=(0, 0, 3, 0, 0, 0))
    out, (codes, continuous, _) = forward(params, batch, _item_text())
    assert _all_finite(out) and _all_finite(continuous)
    # With no events, behaviour and text reduce to their source tokens: whatever the padded
    # event arrays of such a user hold, the representation stays the same.
    batch2 = dict(batch, items=batch["items"].copy(), event_feats=batch["event_feats"] + 3.0)
    batch2["items"][0] = 5
    out2, _ = forward(params, batch2, _item_text())
    np.testing.assert_allclose(np.asarray(out2["h"])[0], np.asarray(out["h"])[0], atol=1e-5)


def test_model_is_causal_over_sources(cfg, params, forward):
    assert tuple(cfg.model.sources) == ("tabular", "behaviour", "text")
    batch, text = _batch(), _item_text()
    base, _ = forward(params, batch, text)

    def view_change(out):
        return {s: float(np.abs(np.asarray(out["views"][s]) - np.asarray(base["views"][s])).max())
                for s in cfg.model.sources}

    # Text is the last source: only its own view (and the shared representation) moves.
    new_text, _ = forward(params, batch, text + 1.0)
    d = view_change(new_text)
    assert d["tabular"] == 0.0 and d["behaviour"] == 0.0 and d["text"] > 1e-4, d
    assert np.abs(np.asarray(new_text["h"]) - np.asarray(base["h"])).max() > 1e-4
    # Behaviour (event features only, not the items that the text is read by) is source 2.
    new_events, _ = forward(params, dict(batch, event_feats=batch["event_feats"] * 2.0 + 1.0), text)
    d = view_change(new_events)
    assert d["tabular"] == 0.0 and d["behaviour"] > 1e-4 and d["text"] > 1e-4, d
    # Tabular is the first source: every view moves.
    new_cat = dict(batch, cat=(batch["cat"] + 1) % np.array(CAT_SIZES, np.int32))
    d = view_change(forward(params, new_cat, text)[0])
    assert min(d.values()) > 1e-4, d


def test_tokens(cfg, params, forward):
    q = cfg.quantizer
    out, (codes, continuous, residuals) = forward(params, _batch(), _item_text())
    sources = tuple(cfg.model.sources)
    b = len(LENGTHS)
    assert codes.shape == (b, q.shared_levels + len(sources) * q.source_levels)
    assert codes.dtype == jnp.int32
    assert np.asarray(codes[:, :q.shared_levels]).max() < q.shared_codes
    assert np.asarray(codes[:, q.shared_levels:]).max() < q.source_codes
    assert np.asarray(codes).min() >= 0
    # The layout: shared codes first, then each source's in config order, same as the forward pass.
    want = np.concatenate([np.asarray(out["quantized"][k].codes) for k in ("shared",) + sources], -1)
    np.testing.assert_array_equal(np.asarray(codes), want)
    assert continuous.shape == (b, cfg.model.shared_dim + len(sources) * cfg.model.source_dim)
    np.testing.assert_allclose(np.asarray(continuous[:, :cfg.model.shared_dim]), np.asarray(out["h"]), atol=1e-6)
    assert residuals["shared"].shape == (b, q.shared_levels, cfg.model.shared_dim)


# ----------------------------------------------------------------------------- views
def test_full_view_masks_the_history():
    batch = _batch()
    view = full_view(batch)
    want = np.arange(MAX_EVENTS)[None] < np.array(LENGTHS)[:, None]
    np.testing.assert_array_equal(np.asarray(view["input_mask"]), want)
    np.testing.assert_array_equal(np.asarray(view["items"]), batch["items"])


# max_targets fixes shapes (static); item_dropout is traced, so both crop tests share a compile.
_crops = _jit(jax.vmap(crop_view, in_axes=(None, 0, None, None)), static_argnums=2)


def test_crop_view_cuts_the_last_events_as_targets():
    batch = _batch()
    lengths = np.array(LENGTHS)
    pos = np.arange(MAX_EVENTS)
    keys = jax.random.split(jax.random.key(0, impl="rbg"), 32)
    views, next_items, next_mask = jax.device_get(_crops(batch, keys, 3, 0.0))
    seen_cuts = set()
    for k in range(32):
        for b, length in enumerate(lengths):
            cut = int(np.asarray(next_mask[k, b]).sum())
            mask = np.asarray(next_mask[k, b])
            np.testing.assert_array_equal(mask, np.arange(3) < cut)  # targets left-aligned
            if length < 2:
                assert cut == 0
            else:
                assert 1 <= cut <= min(3, length - 1)
            keep = length - cut
            if length == 8:
                seen_cuts.add(cut)
            # Targets are exactly the cut events, in order; padded target slots hold 0.
            np.testing.assert_array_equal(np.asarray(next_items[k, b, :cut]), batch["items"][b, keep:length])
            assert np.all(np.asarray(next_items[k, b, cut:]) == 0)
            # The input keeps every event before the cut and nothing after.
            np.testing.assert_array_equal(np.asarray(views["input_mask"][k, b]), pos < keep)
            np.testing.assert_array_equal(np.asarray(views["items"][k, b]), np.where(pos < keep, batch["items"][b], 0))
    assert seen_cuts == {1, 2, 3}
    # Everything else of the batch passes through untouched.
    np.testing.assert_array_equal(np.asarray(views["cat"][0]), batch["cat"])
    np.testing.assert_array_equal(np.asarray(views["event_feats"][0]), batch["event_feats"])


def test_crop_view_item_dropout_spares_targets_and_last_input():
    batch = _batch()
    batch["items"] = np.where(batch["items"] > 0, np.arange(1, MAX_EVENTS + 1)[None], 0).astype(np.int32)  # distinct
    lengths = np.array(LENGTHS)
    keys = jax.random.split(jax.random.key(1, impl="rbg"), 32)
    views, next_items, next_mask = jax.device_get(_crops(batch, keys, 3, 0.5))
    dropped_any = False
    for k in range(32):
        for b, length in enumerate(lengths):
            cut = int(np.asarray(next_mask[k, b]).sum())
            keep = length - cut
            mask = np.asarray(views["input_mask"][k, b])
            assert not mask[keep:].any()
            if keep > 0:
                assert mask[keep - 1]  # the most recent input event is never dropped
            dropped_any |= bool((~mask[:keep]).any())
            items = np.asarray(views["items"][k, b])
            np.testing.assert_array_equal(items, np.where(mask, batch["items"][b], 0))
            # A target never shows up in the input.
            assert not set(np.asarray(next_items[k, b, :cut]).tolist()) & set(items[items > 0].tolist())
    assert dropped_any


# ----------------------------------------------------------------------------- the objective
VARIANTS = {
    "base": {},
    "alpha0": {"loss.alpha": "0.0"},
    "u2i0": {"loss.w_u2i": "0.0"},
    "u2u0": {"loss.w_u2u": "0.0"},
    "cooc0": {"loss.w_cooc": "0.0"},
}


@pytest.fixture(scope="module")
def objective_runs(cfg, model, params):
    """Metrics of every variant and the gradient of the base objective, all from one compile."""
    cfgs = {}
    for name, overrides in VARIANTS.items():
        c = copy.deepcopy(cfg)
        for key, value in overrides.items():
            apply_override(c, key, value)
        cfgs[name] = c

    @_jit
    def run(params, batch, item_text, key, quantize_on):
        def objective(p, c):
            return u2qt_objective(model, p, batch, item_text, key, c, quantize_on)

        (_, (base, _)), grads = jax.value_and_grad(lambda p: objective(p, cfgs["base"]), has_aux=True)(params)
        metrics = {name: objective(params, c)[1][0] for name, c in cfgs.items() if name != "base"}
        metrics["base"] = base
        return metrics, grads

    batch = _batch()
    batch["valid"] = np.array([True] * (len(LENGTHS) - 1) + [False])  # the last row is padding
    key = jax.random.key(3, impl="rbg")  # compiles to far less than threefry
    metrics, grads = run(params, batch, _item_text(), key, True)
    # The padding row's content must not matter.
    padded = dict(batch, cat=batch["cat"].copy(), items=batch["items"].copy(), length=batch["length"].copy())
    padded["items"][-1] = np.arange(1, MAX_EVENTS + 1)
    padded["length"][-1] = MAX_EVENTS
    padded["cat"][-1] = 1
    metrics_padded, _ = run(params, padded, _item_text(), key, True)
    # Before the k-means initialisation (quantization off); a traced flag, so no new compile.
    metrics_off, grads_off = run(params, batch, _item_text(), key, False)
    return jax.device_get({"metrics": metrics, "grads": grads, "padded": metrics_padded,
                           "off": metrics_off, "grads_off": grads_off})


def test_objective_is_finite_with_finite_grads_everywhere(params, objective_runs):
    metrics, grads = objective_runs["metrics"], objective_runs["grads"]
    for name, m in metrics.items():
        assert all(np.isfinite(v) for v in m.values()), (name, m)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    bad = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads) if not np.all(np.isfinite(g))]
    assert not bad, bad
    # Every part of the model learns: encoders, Q-Former, projections, codebooks, decoders.
    for name in ("tabular", "behaviour", "text", "qformer", "shared_proj", "cf_proj", "codebooks_shared",
                 "codebooks_behaviour", "decoder_text", "text_head"):
        assert sum(np.abs(g).sum() for g in jax.tree.leaves(grads[name])) > 0, name


def test_objective_composition(cfg, objective_runs):
    m = objective_runs["metrics"]["base"]
    lc = cfg.loss
    assert m["loss"] == pytest.approx(m["l_sem"] + lc.alpha * m["l_cf"] + lc.beta * m["l_align"], rel=1e-5)
    recon = sum(v for k, v in m.items() if k.startswith("recon_"))
    quant = sum(v for k, v in m.items() if k.startswith("quant_"))
    assert {k for k in m if k.startswith("quant_")} == {"quant_shared"} | {f"quant_{s}" for s in cfg.model.sources}
    assert m["l_sem"] == pytest.approx(recon + quant, rel=1e-5)
    assert m["l_align"] == pytest.approx(lc.w_u2i * m["align_u2i"] + lc.w_u2u * m["align_u2u"]
                                         + lc.w_cooc * m["align_cooc"], rel=1e-5)
    assert all(m[f"quant_{k}"] > 0 for k in ("shared",) + tuple(cfg.model.sources))


def test_padding_rows_do_not_change_the_objective(objective_runs):
    metrics, padded = objective_runs["metrics"], objective_runs["padded"]
    for name in metrics:
        for key, value in metrics[name].items():
            assert padded[name][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, key)


def test_quantization_off_passes_vectors_through(params, forward):
    # Before the k-means initialisation: z_q is the continuous vector, no quantization loss,
    # but codes (and their error) are still computed.
    on, _ = forward(params, _batch(), _item_text(), True)
    off, _ = forward(params, _batch(), _item_text(), False)
    vectors = {"shared": off["h"], **off["views"]}
    for k, q in off["quantized"].items():
        assert q.loss == 0.0 and on["quantized"][k].loss > 0, k
        np.testing.assert_array_equal(q.z_q, vectors[k])
        np.testing.assert_array_equal(q.codes, on["quantized"][k].codes)
        assert q.recon_error > 0
        assert np.abs(on["quantized"][k].z_q - vectors[k]).max() > 1e-4


def test_objective_with_quantization_off(cfg, objective_runs):
    on, off = objective_runs["metrics"]["base"], objective_runs["off"]["base"]
    quant = {k: v for k, v in off.items() if k.startswith("quant_")}
    assert len(quant) == 1 + len(cfg.model.sources) and all(v == 0.0 for v in quant.values()), quant
    assert all(on[k] > 0 for k in quant)
    assert off["l_sem"] == pytest.approx(sum(v for k, v in off.items() if k.startswith("recon_")), rel=1e-5)
    assert all(np.isfinite(v) for v in off.values())
    # Codes are still computed (their error is reported), but the codebooks get no gradient.
    assert all(off[k] > 0 for k in off if k.startswith("qerr_"))
    grads = objective_runs["grads_off"]
    assert _all_finite(grads)
    assert all(np.all(grads[f"codebooks_{k}"] == 0) for k in ("shared",) + tuple(cfg.model.sources))
    assert np.abs(grads["shared_proj"]["kernel"]).sum() > 0


def test_beta_zero_has_no_alignment_terms(model, params):
    # Traced, not compiled: with β = 0 there is no second view and no alignment term at all.
    cfg = _config(**{"loss.beta": "0.0"})
    batch = _batch()
    seen = []
    apply = model.apply

    class Spy:  # records the batch size the model is applied to
        def apply(self, variables, view, *args, **kwargs):
            seen.append(view["items"].shape[0])
            return apply(variables, view, *args, **kwargs)

    _, (metrics, aux) = jax.eval_shape(lambda p, k: u2qt_objective(Spy(), p, batch, _item_text(), k, cfg),
                                       params, jax.random.key(0))
    assert seen == [len(LENGTHS)]
    assert not [k for k in metrics if k.startswith("align_")]
    assert {"loss", "l_sem", "l_cf", "l_align"} <= set(metrics)
    two, _ = jax.eval_shape(lambda p, k: u2qt_objective(Spy(), p, batch, _item_text(), k, _config())[1],
                            params, jax.random.key(0))
    assert seen == [len(LENGTHS), 2 * len(LENGTHS)]
    assert {"align_u2i", "align_u2u", "align_cooc"} <= set(two)


@pytest.mark.parametrize("variant,term", [("alpha0", "l_cf"), ("u2i0", "align_u2i"), ("u2u0", "align_u2u"),
                                          ("cooc0", "align_cooc")])
def test_switched_off_term_drops_out_of_the_total(cfg, objective_runs, variant, term):
    metrics = objective_runs["metrics"]
    base, off = metrics["base"], metrics[variant]
    lc = cfg.loss
    weight = {"l_cf": lc.alpha, "align_u2i": lc.beta * lc.w_u2i, "align_u2u": lc.beta * lc.w_u2u,
              "align_cooc": lc.beta * lc.w_cooc}[term]
    assert weight * base[term] > 1e-3  # the term mattered in the base run
    # Same key, same views: the total loses exactly that term's contribution.
    assert off["loss"] == pytest.approx(base["loss"] - weight * base[term], rel=1e-5)
    assert off["l_sem"] == pytest.approx(base["l_sem"], rel=1e-5)
    if term != "l_cf":
        assert term not in off
        assert off["l_align"] == pytest.approx(base["l_align"] - weight / lc.beta * base[term], rel=1e-5)
