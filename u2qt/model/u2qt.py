"""U²QT (He et al. 2025): per-source encoders → causal Q-Former → multi-view residual quantization.

    tokens_s = Encoder_s(source_s)                         s ∈ {tabular, behaviour, text}
    h, (v_1..v_S) = CausalQFormer(tokens_1..tokens_S)      shared representation, source views
    ĥ = RQ(h; shared stack),  v̂_s = RQ(v_s; stack of source s)
    x̃_s = Decoder_s([ĥ; v̂_s])                            reconstruct each source
The user's tokens are the codes of every view: the shared stack's L codes, then each source's.
The training objective L = L_sem + α·L_cf + β·L_align is assembled in ``u2qt_objective``
from the equations in ``u2qt.losses``.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from u2qt import losses
from u2qt.model import quantizer as rq
from u2qt.model.encoders import SequenceEncoder, TabularEncoder, TextEncoder
from u2qt.model.layers import masked_mean_pool
from u2qt.model.qformer import CausalQFormer

SOURCES = ("tabular", "behaviour", "text")


class ModelSpec(NamedTuple):
    """What the model needs to know about the data set (from ``DatasetSpec``)."""
    cat_sizes: tuple[int, ...]
    num_numeric: int
    num_items: int
    max_events: int
    text_dim: int


class U2QT(nn.Module):
    spec: ModelSpec
    cfg: Any  # the config's ``model`` and ``quantizer`` sections (ConfigDict or dataclass)

    def setup(self):
        m, q = self.cfg.model, self.cfg.quantizer
        self.sources = tuple(m.sources)
        for s in self.sources:
            if s not in SOURCES:
                raise ValueError(f"config model.sources: unknown source {s!r}; known: {SOURCES}")
        self.tabular = TabularEncoder(tuple(self.spec.cat_sizes), self.spec.num_numeric, m.dim)
        self.behaviour = SequenceEncoder(self.spec.num_items, self.spec.max_events, m.dim, m.seq_layers,
                                         m.num_heads, m.dropout)
        self.text = TextEncoder(m.dim)
        self.qformer = CausalQFormer(len(self.sources), m.queries_per_source, m.dim, m.qformer_layers,
                                     m.num_heads, m.dropout)
        self.shared_proj = nn.Dense(m.shared_dim)
        self.view_proj = {s: nn.Dense(m.source_dim, name=f"view_proj_{s}") for s in self.sources}
        self.behaviour_proj = nn.Dense(m.shared_dim)
        self.cf_proj = nn.Dense(m.dim)
        init = nn.initializers.normal(0.1)
        codebooks = {"shared": self.param("codebooks_shared", init, (q.shared_levels, q.shared_codes, m.shared_dim))}
        for s in self.sources:
            codebooks[s] = self.param(f"codebooks_{s}", init, (q.source_levels, q.source_codes, m.source_dim))
        self.codebooks = codebooks
        # Decoders: from [ĥ; v̂_s] to each source's reconstruction target.
        self.decoder_trunk = {s: nn.Sequential([nn.Dense(m.dim), nn.gelu, nn.Dense(m.dim), nn.gelu],
                                               name=f"decoder_{s}") for s in self.sources}
        self.cat_heads = [nn.Dense(size + 1, name=f"cat_head_{f}") for f, size in enumerate(self.spec.cat_sizes)]
        self.num_head = nn.Dense(max(self.spec.num_numeric, 1))
        self.text_head = nn.Dense(self.spec.text_dim)

    # ------------------------------------------------------------------ encoding
    def encode(self, view: dict, item_text: jax.Array, deterministic: bool):
        """Continuous representations of one view of a batch: shared h [B, Ds] and views {s: [B, Dv]}."""
        tokens, masks = [], []
        beh_tokens = beh_mask = None
        for s in self.sources:
            if s == "tabular":
                t, msk = self.tabular(view["cat"], view["num"], view["num_mask"])
            elif s == "behaviour":
                t, msk = self.behaviour(view["items"], view["event_feats"], view["input_mask"], deterministic)
                beh_tokens, beh_mask = t, msk
            else:
                t, msk = self.text(jnp.take(item_text, view["items"], axis=0), view["input_mask"])
            tokens.append(t)
            masks.append(msk)
        shared, groups = self.qformer(tokens, masks, deterministic)
        h = self.shared_proj(shared)
        views = {s: self.view_proj[s](groups[:, i]) for i, s in enumerate(self.sources)}
        behaviour_repr = None
        if beh_tokens is not None:
            behaviour_repr = self.behaviour_proj(masked_mean_pool(beh_tokens, beh_mask))
        return h, views, behaviour_repr

    def quantize(self, h, views, mask=None, quantize_on=True):
        """Residual quantization of every view. While ``quantize_on`` is False (the warm-up before
        the k-means initialisation) z_q passes the continuous vector through and the
        quantization losses are zero; codes are still computed."""
        qc = self.cfg.quantizer
        out = {"shared": rq.quantize(h, self.codebooks["shared"], qc, mask)}
        for s, v in views.items():
            out[s] = rq.quantize(v, self.codebooks[s], qc, mask)
        on = jnp.asarray(quantize_on)
        vectors = {"shared": h, **views}
        return {k: q._replace(z_q=jnp.where(on, q.z_q, vectors[k]), loss=jnp.where(on, q.loss, 0.0))
                for k, q in out.items()}

    def decode(self, quantized: dict, deterministic: bool = True):
        """Reconstruction predictions per source from [ĥ; v̂_s].

        In training, v̂_s is zeroed for a random ``model.view_dropout`` share of the rows, so the
        shared tokens alone must reconstruct every source: what distinguishes two users cannot
        hide in a source-specific stack (that would make their shared codes collide).
        """
        h_q = quantized["shared"].z_q
        drop = self.cfg.model.view_dropout
        preds = {}
        for s in self.sources:
            v_q = quantized[s].z_q
            if not deterministic and drop > 0:
                keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - drop, (v_q.shape[0], 1))
                v_q = v_q * keep
            x = self.decoder_trunk[s](jnp.concatenate([h_q, v_q], -1))
            if s == "tabular":
                preds[s] = ([head(x) for head in self.cat_heads], self.num_head(x)[:, : self.spec.num_numeric])
            elif s == "behaviour":
                preds[s] = x  # scored against the item table
            else:
                preds[s] = self.text_head(x)
        return preds

    def __call__(self, view: dict, item_text: jax.Array, deterministic: bool = True, mask=None, quantize_on=True):
        h, views, behaviour_repr = self.encode(view, item_text, deterministic)
        quantized = self.quantize(h, views, mask, quantize_on)
        return {
            "h": h, "views": views, "behaviour_repr": behaviour_repr, "quantized": quantized,
            "recon": self.decode(quantized, deterministic), "cf_query": self.cf_proj(quantized["shared"].z_q),
            "item_table": self.behaviour.item_table(),
        }

    def tokens(self, view: dict, item_text: jax.Array):
        """Export path: codes of every view [B, L_shared + S·L_source] and the continuous vectors."""
        h, views, _ = self.encode(view, item_text, deterministic=True)
        quantized = self.quantize(h, views)
        codes = jnp.concatenate([quantized["shared"].codes] + [quantized[s].codes for s in self.sources], -1)
        continuous = jnp.concatenate([h] + [views[s] for s in self.sources], -1)
        residuals = {k: v.residuals for k, v in quantized.items()}
        return codes, continuous, residuals


# ---------------------------------------------------------------------- views of a batch
def full_view(batch: dict) -> dict:
    """The whole input history: what the tokens of a user are computed from."""
    n = batch["items"].shape[1]
    view = dict(batch)
    view["input_mask"] = jnp.arange(n)[None] < batch["length"][:, None]
    return view


def crop_view(batch: dict, key: jax.Array, max_targets: int, item_dropout: float) -> tuple[dict, jax.Array, jax.Array]:
    """A training view: the last c ~ U{1..max_targets} events are cut off and become the targets
    of L_cf (the user's "next items"), and a fraction of the remaining events is dropped.

    Returns (view, next_items [B, max_targets], next_mask [B, max_targets]).
    """
    length = batch["length"]
    n = batch["items"].shape[1]
    k_cut, k_drop = jax.random.split(key)
    cut = jax.random.randint(k_cut, length.shape, 1, max_targets + 1)
    cut = jnp.where(length >= 2, jnp.minimum(cut, length - 1), 0)
    keep = length - cut
    pos = jnp.arange(n)[None]
    input_mask = pos < keep[:, None]
    dropped = jax.random.bernoulli(k_drop, item_dropout, input_mask.shape) & (pos < keep[:, None] - 1)
    input_mask = input_mask & ~dropped
    target_pos = keep[:, None] + jnp.arange(max_targets)[None]
    next_mask = jnp.arange(max_targets)[None] < cut[:, None]
    next_items = jnp.where(next_mask, jnp.take_along_axis(batch["items"], jnp.clip(target_pos, 0, n - 1), 1), 0)
    view = dict(batch)
    view["input_mask"] = input_mask
    # Hide the cut items from the model entirely (text is gathered by item index too).
    view["items"] = jnp.where(input_mask, batch["items"], 0)
    return view, next_items, next_mask


# ---------------------------------------------------------------------- the objective
def u2qt_objective(model: U2QT, params, batch: dict, item_text: jax.Array, key: jax.Array, cfg,
                   quantize_on=True) -> tuple[jax.Array, dict]:
    """L = L_sem + α·L_cf + β·L_align on one batch; returns (loss, (metrics, aux)).

    Two views (crops) of every user go through the model as one batch of 2B rows: the first
    view carries L_sem and L_cf, the pair carries the alignment terms.
    """
    lc = cfg.loss
    b = batch["length"].shape[0]
    row_mask = batch.get("valid", jnp.ones((b,), bool))
    k1, k2, k_drop, k_samp = jax.random.split(key, 4)
    view1, next1, next_mask1 = crop_view(batch, k1, lc.cf_max_targets, lc.item_dropout)
    two_views = lc.beta > 0
    if two_views:
        view2, _, _ = crop_view(batch, k2, lc.cf_max_targets, lc.item_dropout)
        both = jax.tree.map(lambda a, c: jnp.concatenate([a, c]), view1, view2)
        both_mask = jnp.concatenate([row_mask, row_mask])
    else:
        both, both_mask = view1, row_mask
    out = model.apply({"params": params}, both, item_text, deterministic=False, mask=both_mask,
                      quantize_on=quantize_on, rngs={"dropout": k_drop})
    first = lambda x: x[:b]
    second = lambda x: x[b:]
    table = out["item_table"]
    q1 = {k: v._replace(z_q=first(v.z_q), codes=first(v.codes), residuals=first(v.residuals))
          for k, v in out["quantized"].items()}

    # L_sem: reconstruction of each source (from view 1) + quantization losses (both views).
    recon = {}
    has_events = (jnp.sum(view1["input_mask"], -1) > 0) & row_mask
    for s, pred in out["recon"].items():
        if s == "tabular":
            cat_logits, num_pred = pred
            per_row = losses.categorical_recon([first(c) for c in cat_logits], batch["cat"]) + losses.numeric_recon(
                first(num_pred), batch["num"], batch["num_mask"])
            recon[s] = lc.recon_weight * losses.masked_mean(per_row, row_mask)
        elif s == "behaviour":
            bag_mask = view1["input_mask"].astype(jnp.float32)
            per_row = losses.item_softmax_loss(first(pred), table, view1["items"], bag_mask, k_samp, lc.cf_num_sampled)
            recon[s] = lc.recon_weight * losses.masked_mean(per_row, has_events)
        else:
            target = masked_mean_pool(jnp.take(item_text, view1["items"], axis=0), view1["input_mask"])
            recon[s] = lc.recon_weight * losses.masked_mean(losses.cosine_recon(first(pred), target), has_events)
    quant = {f"quant_{k}": v.loss for k, v in out["quantized"].items()}
    l_sem = losses.l_sem(recon, quant)

    # L_cf: next items from the quantized shared representation.
    l_cf = losses.l_cf(first(out["cf_query"]), table, next1, next_mask1, row_mask, k_samp, lc.cf_num_sampled)

    # L_align (DAS) between the two views.
    align_terms = {}
    if two_views:
        t = lc.temperature
        user_q = q1["shared"].z_q
        if lc.w_u2i > 0 and out["behaviour_repr"] is not None:
            align_terms["u2i"] = losses.info_nce(user_q, second(out["behaviour_repr"]), has_events, t)
        if lc.w_u2u > 0:
            align_terms["u2u"] = losses.info_nce(first(out["h"]), second(out["h"]), row_mask, t)
        if lc.w_cooc > 0:
            history = jnp.where(jnp.arange(batch["items"].shape[1])[None] < batch["length"][:, None], batch["items"], 0)
            align_terms["cooc"] = losses.co_occurrence_nce(user_q, losses.item_overlap(history, lc.cooc_buckets),
                                                           row_mask, t)
    weights = {"u2i": lc.w_u2i, "u2u": lc.w_u2u, "cooc": lc.w_cooc}
    l_align = losses.l_align(align_terms, weights) if align_terms else jnp.zeros(())
    total = losses.total_loss(l_sem, l_cf, l_align, alpha=lc.alpha, beta=lc.beta)

    metrics = {"loss": total, "l_sem": l_sem, "l_cf": l_cf, "l_align": l_align}
    metrics.update({f"recon_{k}": v for k, v in recon.items()})
    metrics.update(quant)
    metrics.update({f"align_{k}": v for k, v in align_terms.items()})
    metrics.update({f"qerr_{k}": v.recon_error for k, v in out["quantized"].items()})
    aux = {"codes": {k: v.codes for k, v in q1.items()}, "residuals": {k: v.residuals for k, v in q1.items()}}
    return total, (metrics, aux)
