"""U²QT user tokenizer task (He et al. 2025): users → tokens from tabular attributes, behaviour
and item text, trained with the DAS objective L = L_sem + α·L_cf + β·L_align.

The model (encoders → causal Q-Former → multi-view RQ → decoders) is ``u2qt/models/user_tokenizer.py``;
the equations are ``u2qt.losses``; this file assembles them on two training views of each user
(``crop_view``) and tokenizes every user from their whole history (``full_view``).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from u2qt import files, losses
from u2qt.data.load import load_data, load_streamed
from u2qt.data.tables import settle_warnings
from u2qt.data.text import item_text_table
from u2qt.models.user_tokenizer import U2QT, ModelSpec, active_terms
from u2qt.nn.layers import masked_mean
from u2qt.quant.codebooks import quantize_on
from u2qt.tasks.core import EXAMPLE_ROWS, Encoded, ServingFunction


class UserTokenizerTask:
    """Users → semantic IDs (a shared stack and one per source); capabilities: Tokenizes, Servable."""
    name = "user_tokenizer"
    model_keys = ("cat", "num", "num_mask", "items", "event_feats", "length")
    row_kind = "user"

    def __init__(self, cfg, cache_dir: str, log=print):
        # data.stream_chunk_users > 0: the examples are array_record files read lazily (data
        # larger than memory), with the same keys, shapes and dtypes as the in-memory arrays.
        data = (load_streamed(cfg.data, cache_dir, log) if cfg.data.get("stream_chunk_users", 0)
                else load_data(cfg.data))
        if data.report is not None:
            log(f"data: {data.report}")
        self.data_warnings = settle_warnings(data.warnings, cfg.data.strict, log)
        self.cfg = cfg
        self.data = data
        self.examples = self.rows = data.examples
        self.row_ids = data.row_ids
        self.labels = data.user_types
        item_text = item_text_table(data.spec.item_texts, cache_dir, log=log)
        self.constants = {"item_text": item_text}
        q = cfg.quantizer
        self.stacks = {"shared": (q.shared_levels, q.shared_codes),
                       **{s: (q.source_levels, q.source_codes) for s in cfg.model.sources}}
        spec = data.spec
        self.model = U2QT(ModelSpec(tuple(spec.cat_sizes), len(spec.num_fields), spec.num_items, spec.max_events,
                                    item_text.shape[1]), cfg)
        log(f"data: {len(self.row_ids)} users, {spec.num_items} items, "
            f"{data.users_with_events} users with events; fields {spec.cat_fields + spec.num_fields}")

    # -------------------------------------------------------------- core
    def init(self, key, sample, constants):
        return self.model.init({"params": key}, full_view(sample), constants["item_text"])["params"]

    def loss(self, params, batch, constants, key, step):
        return u2qt_loss(self.model, params, batch, constants["item_text"], key, self.cfg,
                         quantize_on(step, self.cfg.quantizer))

    def write_spec(self, workdir: str) -> None:
        """The data set's vocabularies and normalization, next to the run (serving needs them)."""
        files.write_text(os.path.join(workdir, "dataset_spec.json"), self.data.spec.to_json())

    # -------------------------------------------------------------- Tokenizes
    def codebooks(self, params):
        return {view: params[f"codebooks_{view}"] for view in self.stacks}

    def with_codebooks(self, params, books):
        return dict(params, **{f"codebooks_{view}": b for view, b in books.items()})

    def encode(self, params, batch, constants):
        return Encoded(*self.model.apply({"params": params}, full_view(batch), constants["item_text"],
                                         method=U2QT.tokens))

    # -------------------------------------------------------------- Servable
    def serving_functions(self):
        shapes = {k: ((None,) + v.shape[1:], v.dtype) for k, v in self.rows.items() if k in self.model_keys}

        def tokens(params, constants, *inputs):
            encoded = self.encode(params, dict(zip(shapes, inputs)), constants)
            return {view: encoded.codes[view] for view in self.stacks}

        return {"tokens": ServingFunction(tokens, shapes, "a user's features → codes of every view",
                                          example=tuple(np.asarray(self.rows[k][:EXAMPLE_ROWS]) for k in shapes))}


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
def u2qt_loss(model: U2QT, params, batch: dict, item_text: jax.Array, key: jax.Array, cfg,
              quantize_on=True) -> tuple[jax.Array, dict]:
    """L = L_sem + α·L_cf + β·L_align on one batch; returns (loss, aux) as ``Task.loss``.

    Two views (crops) of every user go through the model as one batch of 2B rows: the first
    view carries L_sem and L_cf, the pair carries the alignment terms.
    """
    lc = cfg.loss
    terms = active_terms(cfg)
    b = batch["length"].shape[0]
    row_mask = batch.get("valid", jnp.ones((b,), bool))
    k1, k2, k_drop, k_samp = jax.random.split(key, 4)
    view1, next1, next_mask1 = crop_view(batch, k1, lc.cf_max_targets, lc.item_dropout)
    two_views = terms["u2i"] or terms["u2u"] or terms["cooc"]
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
    for s, pred in out.get("recon", {}).items():
        if s == "tabular":
            cat_logits, num_pred = pred
            per_row = losses.categorical_recon([first(c) for c in cat_logits], batch["cat"]) + losses.numeric_recon(
                first(num_pred), batch["num"], batch["num_mask"])
            recon[s] = lc.recon_weight * masked_mean(per_row, row_mask)
        elif s == "behaviour":
            bag_mask = view1["input_mask"].astype(jnp.float32)
            per_row = losses.item_softmax_loss(first(pred), table, view1["items"], bag_mask, k_samp, lc.cf_num_sampled)
            recon[s] = lc.recon_weight * masked_mean(per_row, has_events)
        else:
            target = masked_mean(jnp.take(item_text, view1["items"], axis=0), view1["input_mask"], axis=1)
            recon[s] = lc.recon_weight * masked_mean(losses.cosine_recon(first(pred), target), has_events)
    quant = {f"quant_{k}": v.loss for k, v in out["quantized"].items()}
    l_sem = losses.l_sem(recon, quant)

    # L_cf: next items from the quantized shared representation.
    l_cf = jnp.zeros(())
    if terms["cf"]:
        l_cf = losses.l_cf(first(out["cf_query"]), table, next1, next_mask1, row_mask, k_samp, lc.cf_num_sampled)

    # L_align (DAS) between the two views.
    align_terms = {}
    t = lc.temperature
    user_q = q1["shared"].z_q
    if terms["u2i"] and out["behaviour_repr"] is not None:
        align_terms["u2i"] = losses.info_nce(user_q, second(out["behaviour_repr"]), has_events, t)
    if terms["u2u"]:
        align_terms["u2u"] = losses.info_nce(first(out["h"]), second(out["h"]), row_mask, t)
    if terms["cooc"]:
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
    return total, {"metrics": metrics, "codes": {k: v.codes for k, v in q1.items()},
                   "residuals": {k: v.residuals for k, v in q1.items()}}
