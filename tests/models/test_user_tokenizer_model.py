"""u2qt.models.user_tokenizer: the U2QT module (encoders → causal Q-Former → multi-view RQ →
decoders) on a tiny batch: its parameter tree, forward pass, causality over sources, tokens, and
the quantizer switched off before the k-means initialisation.

The model is the `configs/default.py:runlocal` one (tests/tiny_user_tokenizer.py). XLA compiles
dominate the run time on CPU, so every forward pass goes through the one compiled `forward`.
Parameters come from `jax.eval_shape(model.init)` (the real tree and shapes, nothing compiled)
filled with numpy draws at initializer scale. Test jits compile at XLA backend optimization
level 0 (`_jit`): the arithmetic is the same and compiling takes about half as long.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_user_tokenizer import CAT_SIZES, LENGTHS, NUM_ITEMS, NUM_NUMERIC, TEXT_DIM
from tiny_user_tokenizer import all_finite as _all_finite
from tiny_user_tokenizer import cfg, model, params  # noqa: F401  (shared fixtures)
from tiny_user_tokenizer import jit_o0 as _jit
from tiny_user_tokenizer import make_batch as _batch
from tiny_user_tokenizer import make_item_text as _item_text

from u2qt.models.user_tokenizer import U2QT
from u2qt.tasks.user_tokenizer import full_view


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
    # One entry per stack, the same codes as the forward pass. (A dict's order does not survive
    # jit; the exported table orders its views by the task's stacks, see tests/train/test_loop.py.)
    assert set(codes) == {"shared", *sources} and set(residuals) == {"shared", *sources}
    assert codes["shared"].shape == (b, q.shared_levels)
    assert all(codes[s].shape == (b, q.source_levels) for s in sources)
    assert all(c.dtype == jnp.int32 for c in codes.values())
    assert np.asarray(codes["shared"]).max() < q.shared_codes
    assert max(np.asarray(codes[s]).max() for s in sources) < q.source_codes
    assert min(np.asarray(c).min() for c in codes.values()) >= 0
    for k in ("shared",) + sources:
        np.testing.assert_array_equal(np.asarray(codes[k]), np.asarray(out["quantized"][k].codes))
    assert continuous.shape == (b, cfg.model.shared_dim + len(sources) * cfg.model.source_dim)
    np.testing.assert_allclose(np.asarray(continuous[:, :cfg.model.shared_dim]), np.asarray(out["h"]), atol=1e-6)
    assert residuals["shared"].shape == (b, q.shared_levels, cfg.model.shared_dim)


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
