"""u2qt.tasks.user_tokenizer: the views of a batch (full_view, crop_view) and the U²QT loss
L = L_sem + α·L_cf + β·L_align (u2qt_loss) on a tiny batch.

The model is the `configs/default.py:runlocal` one (tests/tiny_user_tokenizer.py). XLA compiles
dominate the run time on CPU, so all loss variants plus the gradient go through `objective_runs`,
one compile (XLA merges their identical forward passes). Parameters come from
`jax.eval_shape(model.init)` filled with numpy draws at initializer scale. Random keys are "rbg"
keys: the tests do not depend on the generator, and threefry doubles the compile time. Test jits
compile at XLA backend optimization level 0 (`_jit`).
"""
from __future__ import annotations

import copy

import jax
import numpy as np
import pytest
from tiny_user_tokenizer import LENGTHS, MAX_EVENTS
from tiny_user_tokenizer import all_finite as _all_finite
from tiny_user_tokenizer import config as _config
from tiny_user_tokenizer import cfg, model, params  # noqa: F401  (shared fixtures)
from tiny_user_tokenizer import jit_o0 as _jit
from tiny_user_tokenizer import make_batch as _batch
from tiny_user_tokenizer import make_item_text as _item_text

from u2qt.config import apply_override
from u2qt.tasks.user_tokenizer import crop_view, full_view, u2qt_loss


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
            return u2qt_loss(model, p, batch, item_text, key, c, quantize_on)

        (_, aux), grads = jax.value_and_grad(lambda p: objective(p, cfgs["base"]), has_aux=True)(params)
        metrics = {name: objective(params, c)[1]["metrics"] for name, c in cfgs.items() if name != "base"}
        metrics["base"] = aux["metrics"]
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

    _, aux = jax.eval_shape(lambda p, k: u2qt_loss(Spy(), p, batch, _item_text(), k, cfg), params, jax.random.key(0))
    metrics = aux["metrics"]
    assert seen == [len(LENGTHS)]
    assert not [k for k in metrics if k.startswith("align_")]
    assert {"loss", "l_sem", "l_cf", "l_align"} <= set(metrics)
    two = jax.eval_shape(lambda p, k: u2qt_loss(Spy(), p, batch, _item_text(), k, _config())[1]["metrics"],
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
