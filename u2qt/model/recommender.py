"""Sequential recommender on semantic IDs (Lin et al. 2025, "Unified semantic and ID
representation learning"), run by the one train loop and judged by the leave-one-out,
full-ranking protocol of ``u2qt/eval/ranking.py``.

A SASRec causal transformer (``u2qt/model/sasrec.py``) with full-softmax cross-entropy over all
items; ``model.item_repr`` chooses the item representation e_i, which both embeds the inputs and
scores the next item:
  - "id":        e_i = E_id[i]
  - "semantic":  e_i = Σ_l C_l[code_l(i)]
  - "unified":   e_i = E_id[i] + Σ_l C_l[code_l(i)]
Where the codes come from (``model.codes_path``):
  - "" (Lin et al., end to end): code_l(i) = RQ(MLP_enc(x̃_i)) with x̃_i the item's standardized
    sentence embedding, C_l the codebooks of the stack "item" (k-means init and dead-code resets by
    the loop), so Σ_l C_l[code_l(i)] = ẑ_i; trained with
        L = L_rec + L_quant + recon_weight · ||MLP_dec(z_q,i) - x̃_i||² / D_x   mean over all items,
    the last term estimated each step on ``loss.recon_items`` items drawn uniformly (0: all of them).
  - a finished item-tokenizer run's ``item_codes.parquet``: fixed codes (+ the de-dup token when
    ``model.use_dedup_token``), each position with its own learned embedding table.

Cold start (``data.cold_fraction`` > 0): a seeded random fraction of the items is removed from all
training sequences and from the training softmax (they keep their text); ``final_report`` scores the test cases whose target is
such an item separately ("cold_*"), next to all cases and the popularity buckets of the targets.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from u2qt.data.lcrec import read_lcrec
from u2qt.eval import ranking
from u2qt.model import quantizer as rq
from u2qt.model.item_tokenizer import MLP, item_text_embeddings, read_item_codes, write_item_table
from u2qt.model.sasrec import (GIVEN, SASRec, dropped_targets, next_item_examples, sasrec_loss, sasrec_scores,
                               target_capacity)

ITEM_REPRS = ("id", "semantic", "unified")


@dataclasses.dataclass(frozen=True)
class ColdSplit:
    """The leave-one-out split with ``cold`` items (sorted indices) removed from its train part."""
    split: ranking.LeaveOneOutSplit
    cold: np.ndarray


def remove_cold_items(split: ranking.LeaveOneOutSplit, num_items: int, fraction: float, seed: int) -> ColdSplit:
    """Picks round(fraction · I) items with ``seed`` and removes them from every training sequence."""
    count = int(round(fraction * num_items))
    cold = np.sort(np.random.default_rng(seed).choice(np.arange(1, num_items + 1), count, replace=False))
    if count == 0:
        return ColdSplit(split, cold.astype(np.int32))
    train = [s[~np.isin(s, cold)] for s in split.train]
    return ColdSplit(dataclasses.replace(split, train=train), cold.astype(np.int32))


class RecommenderTask:
    name = "recommender"
    model_keys = ("inputs", "targets")
    labels = None

    def __init__(self, cfg, cache_dir: str, log=print):
        m, d = cfg.model, cfg.data
        if m.item_repr not in ITEM_REPRS:
            raise ValueError(f"config model.item_repr={m.item_repr!r}; known: {ITEM_REPRS}")
        self.cfg = cfg
        data = read_lcrec(d.path, max_description_chars=d.max_description_chars)
        log(f"data: {data.report.summary()}")
        self.data = data
        cold = remove_cold_items(ranking.leave_one_out(data.sequences), data.num_items, d.cold_fraction, d.cold_seed)
        self.split, self.cold = cold.split, cold.cold
        self.train_examples = next_item_examples(self.split.train, d.max_history)
        cap = cfg.train.target_capacity  # -1: sized from the data (see sasrec.target_capacity); 0: all B · T
        if cap < 0:
            cap = target_capacity(self.train_examples["targets"], cfg.train.batch_size)
        self.capacity = cap or None
        self.valid_cases = ranking.make_eval_cases(self.split, "valid", d.max_history)
        self.test_cases = ranking.make_eval_cases(self.split, "test", d.max_history)
        self.learned_codes = m.item_repr != "id" and not m.codes_path
        kw = dict(num_items=data.num_items, d_model=m.dim, num_layers=m.seq_layers, num_heads=m.num_heads,
                  dropout=m.dropout, max_len=d.max_history)
        if self.learned_codes:  # Lin et al. end to end: the item table is built here, from text and IDs
            self.sasrec = SASRec(mode=GIVEN, **kw)
            self.constants = {"item_text": item_text_embeddings(data, cache_dir)}
            q = cfg.quantizer
            self.stacks = {"item": (q.item_levels, q.item_codes)}
            self.encoder = MLP(tuple(m.mlp_hidden) + (m.dim,))
            self.decoder = MLP(tuple(reversed(m.mlp_hidden)) + (self.constants["item_text"].shape[1],))
            self.encode_examples = {"targets": np.arange(1, data.num_items + 1, dtype=np.int32)}
            self.export_ids = list(data.item_ids)
        else:
            codes = (read_item_codes(m.codes_path, data.num_items, m.use_dedup_token)
                     if m.item_repr != "id" else None)
            self.sasrec = SASRec(mode=m.item_repr, codes=codes, **kw)
            self.constants, self.stacks = {}, {}
            self.encode_examples, self.export_ids = self.train_examples, []
            if cfg.quantizer.kmeans_init:
                raise ValueError("config quantizer.kmeans_init must be False: this variant has no codebook stack")
        if len(self.cold):  # cold items are not in the training softmax (not even as negatives)
            known = np.ones(data.num_items + 1, bool)
            known[self.cold] = False
            self.constants["known_items"] = known
        self._scores = jax.jit(lambda p, table, history: sasrec_scores(p["sasrec"], history, self.sasrec, table))
        self._table = jax.jit(lambda p, c: self.item_table(p, c, True)[0])
        log(f"data: {data.num_items} items, {len(self.train_examples['inputs'])} training sequences, "
            f"{len(self.valid_cases)} validation / test cases, {len(self.cold)} cold items; "
            f"items as {m.item_repr} ({'codes learned end to end' if self.learned_codes else m.codes_path or 'IDs'})")

    # -------------------------------------------------------------- the Task protocol
    def init(self, key, sample, constants):
        k = jax.random.split(key, 5)
        if not self.learned_codes:
            return {"sasrec": self.sasrec.init(k[0], sample["inputs"])["params"]}
        m, (levels, codes) = self.cfg.model, self.stacks["item"]
        x = constants["item_text"][:2]
        params = {"sasrec": self.sasrec.init(k[0], sample["inputs"], item_table=jnp.zeros((self.data.num_items + 1, m.dim)))["params"],
                  "encoder": self.encoder.init(k[1], x)["params"],
                  "decoder": self.decoder.init(k[2], jnp.zeros((1, m.dim)))["params"],
                  "codebooks_item": 0.1 * jax.random.normal(k[3], (levels, codes, m.dim))}
        if m.item_repr == "unified":
            params["id_embedding"] = 0.02 * jax.random.normal(k[4], (self.data.num_items + 1, m.dim))
        return params

    def _quantize(self, params, items, constants):
        z = self.encoder.apply({"params": params["encoder"]}, constants["item_text"][items])
        return z, rq.quantize(z, params["codebooks_item"], self.cfg.quantizer)

    def item_table(self, params, constants, quantize_on, key=None):
        """(table [I + 1, d] with row 0 = 0, quantizer output over items 1..I, reconstruction loss:
        over all items, or over ``loss.recon_items`` drawn uniformly with `key`)."""
        items = jnp.arange(1, self.data.num_items + 1)
        z, q = self._quantize(params, items, constants)
        zq = jnp.where(quantize_on, q.z_q, z)  # before the k-means init: the unquantized projection
        table = zq + params["id_embedding"][1:] if "id_embedding" in params else zq
        x, zq_recon = constants["item_text"][1:], zq
        sample = self.cfg.loss.recon_items
        if key is not None and 0 < sample < self.data.num_items:
            pick = jax.random.randint(key, (sample,), 0, self.data.num_items)
            x, zq_recon = x[pick], zq[pick]
        recon = jnp.mean((self.decoder.apply({"params": params["decoder"]}, zq_recon) - x) ** 2)
        return jnp.concatenate([jnp.zeros_like(table[:1]), table]), q, recon

    def objective(self, params, batch, constants, key, quantize_on):
        dropped = dropped_targets(batch["targets"], self.capacity)
        if not self.learned_codes:
            rec = sasrec_loss(params["sasrec"], batch, self.sasrec, dropout_rng=key,
                              candidates=constants.get("known_items"), capacity=self.capacity)
            return rec, ({"loss": rec, "rec": rec, "dropped_targets": dropped}, {"codes": {}, "residuals": {}})
        key, recon_key = jax.random.split(key)
        table, q, recon = self.item_table(params, constants, quantize_on, recon_key)
        rec = sasrec_loss(params["sasrec"], batch, self.sasrec, dropout_rng=key, item_table=table,
                          candidates=constants.get("known_items"), capacity=self.capacity)
        qloss = jnp.where(quantize_on, q.loss, 0.0)
        loss = rec + self.cfg.loss.quant_weight * qloss + self.cfg.loss.recon_weight * recon
        metrics = {"loss": loss, "rec": rec, "recon": recon, "qloss_item": q.loss, "qerr_item": q.recon_error,
                   "dropped_targets": dropped}
        return loss, (metrics, {"codes": {"item": q.codes}, "residuals": {"item": q.residuals}})

    def encode(self, params, batch, constants):
        z, q = self._quantize(params, batch["targets"], constants)
        return q.codes, z, {"item": q.residuals}

    def write_outputs(self, workdir, codes_by_view, continuous):
        write_item_table(os.path.join(workdir, "item_codes.parquet"), self.export_ids, codes_by_view["item"])

    # -------------------------------------------------------------- evaluation
    def ranks(self, params, constants, cases: ranking.EvalCases) -> np.ndarray:
        table = self._table(params, constants) if self.learned_codes else None
        score_fn = lambda b: self._scores(params, table, b["history"])
        return ranking.evaluate_ranks(score_fn, cases, self.cfg.eval.batch_size)

    def evaluate(self, params, constants) -> dict:
        ranks = self.ranks(params, constants, self.valid_cases)
        return {f"valid_{k}": v for k, v in ranking.metrics_from_ranks(ranks).items()}

    def final_report(self, params, constants, workdir, nearest=None, exported=None) -> dict:
        """Test metrics of all cases, by target popularity, and of the cold-start targets (the
        loop's code tables are not needed: the loop reports their usage and collisions)."""
        ranks = self.ranks(params, constants, self.test_cases)
        out = dict(ranking.metrics_from_ranks(ranks))
        out["cases"] = len(ranks)
        out.update({f"valid_{k}": v for k, v in ranking.metrics_from_ranks(
            self.ranks(params, constants, self.valid_cases)).items()})
        n = self.cfg.eval.popularity_buckets
        counts = ranking.item_counts(self.split.train, self.data.num_items)
        buckets = ranking.bucket_by_popularity(counts, self.test_cases.targets, n)
        out["popularity_buckets"] = ranking.metrics_by_bucket(ranks, buckets, n)
        if len(self.cold):
            is_cold = np.isin(self.test_cases.targets, self.cold)
            out["cold_items"] = len(self.cold)
            out["cold_cases"] = int(is_cold.sum())
            if is_cold.any():
                out.update({f"cold_{k}": v for k, v in ranking.metrics_from_ranks(ranks[is_cold]).items()})
            if (~is_cold).any():
                out.update({f"warm_{k}": v for k, v in ranking.metrics_from_ranks(ranks[~is_cold]).items()})
        return out
