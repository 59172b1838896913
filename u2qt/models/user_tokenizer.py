"""U²QT (He et al. 2025): per-source encoders → causal Q-Former → multi-view residual quantization.

    tokens_s = Encoder_s(source_s)                         s ∈ {tabular, behaviour, text}
    h, (v_1..v_S) = CausalQFormer(tokens_1..tokens_S)      shared representation, source views
    ĥ = RQ(h; shared stack),  v̂_s = RQ(v_s; stack of source s)
    x̃_s = Decoder_s([ĥ; v̂_s])                            reconstruct each source
The user's tokens are the codes of every view: the shared stack's L codes, then each source's.
The module holds the parameters; the training objective L = L_sem + α·L_cf + β·L_align is
assembled from the equations of ``u2qt.losses`` by the task (``u2qt/tasks/user_tokenizer.py``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from u2qt.models.encoders import SequenceEncoder, TabularEncoder, TextEncoder
from u2qt.models.qformer import CausalQFormer
from u2qt.nn.layers import masked_mean
from u2qt.quant import residual as rq

SOURCES = ("tabular", "behaviour", "text")


class ModelSpec(NamedTuple):
    """What the model needs to know about the data set (from ``DatasetSpec``)."""
    cat_sizes: tuple[int, ...]
    num_numeric: int
    num_items: int
    max_events: int
    text_dim: int


def active_terms(cfg) -> dict[str, bool]:
    """Which parts of the objective a config switches on; the model builds and runs only those
    (a term with weight 0 costs nothing: not its parameters, not its compute)."""
    lc = cfg.loss
    align = lc.beta > 0
    return {"recon": lc.recon_weight > 0, "cf": lc.alpha > 0,
            "u2i": align and lc.w_u2i > 0 and "behaviour" in tuple(cfg.model.sources),
            "u2u": align and lc.w_u2u > 0, "cooc": align and lc.w_cooc > 0}


class U2QT(nn.Module):
    spec: ModelSpec
    cfg: Any  # the config's ``model``, ``quantizer`` and ``loss`` sections (ConfigDict or dataclass)

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
        if beh_tokens is not None and active_terms(self.cfg)["u2i"]:
            behaviour_repr = self.behaviour_proj(masked_mean(beh_tokens, beh_mask, axis=1))
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
        """What the objective reads: the representations, their quantization, and (when their
        term is on) the reconstructions and the L_cf query."""
        terms = active_terms(self.cfg)
        h, views, behaviour_repr = self.encode(view, item_text, deterministic)
        quantized = self.quantize(h, views, mask, quantize_on)
        out = {"h": h, "views": views, "behaviour_repr": behaviour_repr, "quantized": quantized,
               "item_table": self.behaviour.item_table()}
        if terms["recon"]:
            out["recon"] = self.decode(quantized, deterministic)
        if terms["cf"]:
            out["cf_query"] = self.cf_proj(quantized["shared"].z_q)
        return out

    def tokens(self, view: dict, item_text: jax.Array):
        """Export path: codes {view: [B, L]}, the continuous vectors [B, D_shared + S·D_source]
        (shared, then each source's) and each level's input {view: [B, L, D]}."""
        h, views, _ = self.encode(view, item_text, deterministic=True)
        quantized = self.quantize(h, views)
        continuous = jnp.concatenate([h] + [views[s] for s in self.sources], -1)
        return ({k: q.codes for k, q in quantized.items()}, continuous,
                {k: q.residuals for k, q in quantized.items()})
