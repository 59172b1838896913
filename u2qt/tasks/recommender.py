"""Sequential recommender on semantic IDs (Lin et al. 2025, "Unified semantic and ID
representation learning"), run by the one train loop and judged by the leave-one-out,
full-ranking protocol of ``u2qt/eval/ranking.py``.

A SASRec causal transformer (``u2qt/models/sasrec.py``) with full-softmax cross-entropy over all
items; ``model.item_repr`` chooses the item representation e_i, which both embeds the inputs and
scores the next item:
  - "id":        e_i = E_id[i]
  - "semantic":  e_i = Σ_l C_l[code_l(i)]
  - "unified":   e_i = E_id[i] + Σ_l C_l[code_l(i)]
Where the codes come from (``model.codes_path``):
  - "" (Lin et al., end to end; ``LearnedCodesRecommenderTask``): code_l(i) = RQ(MLP_enc(x̃_i))
    with x̃_i the item's standardized sentence embedding (an RQ-VAE, ``u2qt/models/rqvae.py``),
    C_l the codebooks of the stack "item" (k-means init and dead-code resets by the loop), so
    Σ_l C_l[code_l(i)] = ẑ_i; trained with
        L = L_rec + L_quant + recon_weight · ||MLP_dec(z_q,i) - x̃_i||² / D_x   mean over all items,
    the last term estimated each step on ``loss.recon_items`` items drawn uniformly (0: all of them).
  - a semantic-ID table (a tokenizer run's ``semantic_ids.parquet``, or another project's index
    file in the LETTER / GRID JSON layout): fixed codes (+ the de-dup token when
    ``model.use_dedup_token``), each position with its own learned embedding table.

Cold start (``data.cold_fraction`` > 0): a seeded random fraction of the items is removed from all
training sequences and from the training softmax (they keep their text); ``final_report`` scores the test cases whose target is
such an item separately ("cold_*"), next to all cases and the popularity buckets of the targets.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from u2qt.data.lcrec import read_lcrec
from u2qt.data.sequences import leave_one_out, next_item_examples, remove_cold_items
from u2qt.data.tables import DataError, settle_warnings
from u2qt.data.text import item_text_table
from u2qt.eval import ranking
from u2qt.models.rqvae import RQVAE
from u2qt.models.sasrec import GIVEN, SASRec, dropped_targets, sasrec_loss, sasrec_scores, target_capacity
from u2qt.quant.codebooks import quantize_on
from u2qt.quant.semantic_ids import SemanticIds
from u2qt.tasks.core import EXAMPLE_ROWS, ServingFunction
from u2qt.tasks.item_tokenizer import ItemTextCodes

ITEM_REPRS = ("id", "semantic", "unified")


def make_recommender(cfg, cache_dir: str, log=print):
    """The recommender task of a config: codes learned end to end, or IDs / fixed codes."""
    m = cfg.model
    if m.item_repr not in ITEM_REPRS:
        raise ValueError(f"config model.item_repr={m.item_repr!r}; known: {ITEM_REPRS}")
    learned = m.item_repr != "id" and not m.codes_path
    return (LearnedCodesRecommenderTask if learned else RecommenderTask)(cfg, cache_dir, log)


class LeaveOneOut:
    """The leave-one-out protocol on an LC-Rec directory, shared by the recommenders (SASRec here,
    TIGER in ``u2qt/tasks/generative.py``): the data, the split (cold items removed from training
    when ``data.cold_fraction`` > 0), the validation and test cases, and ``evaluate``/``report``
    from the ranks a subclass gives (``ranks(params, constants, cases, desc)``)."""

    def _read(self, cfg, log) -> None:
        d = cfg.data
        self.cfg, self.log = cfg, log
        data = read_lcrec(d.path, max_description_chars=d.max_description_chars)
        log(f"data: {data.report.summary()}")
        self.data_warnings = settle_warnings(data.report.warnings, d.strict, log)
        self.data = data
        cold = remove_cold_items(leave_one_out(data.sequences), data.num_items, d.cold_fraction, d.cold_seed)
        self._set_split(cold.split, cold.cold)

    def _set_split(self, split, cold) -> None:
        """The split a model trains on and the validation / test cases it is evaluated on."""
        d = self.cfg.data
        self.split, self.cold = split, cold
        self.valid_cases = ranking.make_eval_cases(self.split, "valid", d.max_history)
        self.test_cases = ranking.make_eval_cases(self.split, "test", d.max_history)
        if not len(self.valid_cases):
            raise DataError(f"{d.path}: no user has the 3 or more interactions that leave-one-out needs for a "
                            f"validation and a test case, so nothing could be evaluated")

    def ranks(self, params, constants, cases: ranking.EvalCases, desc: str = "evaluation") -> np.ndarray:
        raise NotImplementedError

    # -------------------------------------------------------------- Evaluates
    def evaluate(self, params, constants) -> dict:
        ranks = self.ranks(params, constants, self.valid_cases, "validation")
        return {f"valid_{k}": v for k, v in ranking.metrics_from_ranks(ranks).items()}

    def report(self, params, constants) -> dict:
        """Test metrics of all cases, by target popularity, and of the cold-start targets."""
        ranks = self.ranks(params, constants, self.test_cases, "test")
        out = dict(ranking.metrics_from_ranks(ranks))
        out["cases"] = len(ranks)
        out.update({f"valid_{k}": v for k, v in ranking.metrics_from_ranks(
            self.ranks(params, constants, self.valid_cases, "validation")).items()})
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


class RecommenderTask(LeaveOneOut):
    """SASRec over item IDs or fixed semantic IDs; capabilities: Evaluates, Servable."""
    name = "recommender"
    model_keys = ("inputs", "targets")

    def __init__(self, cfg, cache_dir: str, log=print):
        m, d = cfg.model, cfg.data
        self._read(cfg, log)
        data = self.data
        rows = next_item_examples(self.split.train, d.max_history)
        self.examples = {"inputs": rows["inputs"], "targets": rows["targets"]}
        if not len(self.examples["inputs"]):
            raise DataError(f"{d.path}: no training sequences are left once the validation and test items are held out")
        cap = cfg.train.target_capacity  # -1: sized from the data (see sasrec.target_capacity); 0: all B · T
        if cap < 0:
            cap = target_capacity(self.examples["targets"], cfg.train.batch_size)
        self.capacity = cap or None
        self.constants = {}
        self.sasrec = self._make_sasrec(cache_dir)
        if len(self.cold):  # cold items are not in the training softmax (not even as negatives)
            known = np.ones(data.num_items + 1, bool)
            known[self.cold] = False
            self.constants["known_items"] = known
        self._scores = jax.jit(lambda p, table, history: sasrec_scores(p["sasrec"], history, self.sasrec, table))
        log(f"data: {data.num_items} items, {len(self.examples['inputs'])} training sequences, "
            f"{len(self.valid_cases)} validation / test cases, {len(self.cold)} cold items; "
            f"items as {m.item_repr} ({self._codes_source()})")

    def _sasrec_args(self) -> dict:
        m = self.cfg.model
        return dict(num_items=self.data.num_items, d_model=m.dim, num_layers=m.seq_layers, num_heads=m.num_heads,
                    dropout=m.dropout, max_len=self.cfg.data.max_history)

    def _make_sasrec(self, cache_dir) -> SASRec:
        m = self.cfg.model
        if self.cfg.quantizer.kmeans_init:
            raise ValueError("config quantizer.kmeans_init must be False: this variant has no codebook stack")
        codes = None
        if m.item_repr != "id":
            table = SemanticIds.read(m.codes_path).aligned(self.data.item_ids, where=m.codes_path)
            ids = table.full_ids() if m.use_dedup_token else table.all_codes
            codes = np.concatenate([np.zeros((1, ids.shape[1]), np.int32), ids])  # row 0: padding
        return SASRec(mode=m.item_repr, codes=codes, **self._sasrec_args())

    def _codes_source(self) -> str:
        return self.cfg.model.codes_path or "IDs"

    # -------------------------------------------------------------- core
    def init(self, key, sample, constants):
        k = jax.random.split(key, 5)
        return {"sasrec": self.sasrec.init(k[0], sample["inputs"])["params"]}

    def item_table(self, params, constants):
        """[I + 1, d] item representations, or None when SASRec holds its own."""
        return None

    def loss(self, params, batch, constants, key, step):
        rec = sasrec_loss(params["sasrec"], batch, self.sasrec, dropout_rng=key,
                          candidates=constants.get("known_items"), capacity=self.capacity)
        return rec, {"metrics": {"loss": rec, "rec": rec, "dropped_targets": dropped_targets(batch["targets"],
                                                                                             self.capacity)}}

    # -------------------------------------------------------------- Evaluates
    def ranks(self, params, constants, cases: ranking.EvalCases, desc: str = "evaluation") -> np.ndarray:
        table = self.item_table(params, constants)  # once per evaluation, not once per batch
        return ranking.evaluate_ranks(lambda b: self._scores(params, table, b["history"]), cases,
                                      self.cfg.eval.batch_size, log=self.log, desc=desc)

    # -------------------------------------------------------------- Servable
    def serving_functions(self):
        k = min(self.cfg.eval.top_k, self.data.num_items)

        def top_k(params, constants, history):
            scores = sasrec_scores(params["sasrec"], history, self.sasrec, self.item_table(params, constants))
            return jax.lax.top_k(scores, k)

        return {"top_k": ServingFunction(top_k, {"history": ((None, self.cfg.data.max_history), np.int32)},
                                         f"a left-padded history of item indices → the top {k} (scores, item indices)",
                                         example=(self.test_cases.history[:EXAMPLE_ROWS],))}


class LearnedCodesRecommenderTask(ItemTextCodes, RecommenderTask):
    """Lin et al. end to end: the item table comes from an RQ-VAE over item text trained jointly;
    capabilities: Tokenizes (``ItemTextCodes``), Evaluates, Servable."""
    row_key = "targets"

    def _make_sasrec(self, cache_dir) -> SASRec:
        m, q = self.cfg.model, self.cfg.quantizer
        self.constants["item_text"] = item_text_table(self.data.item_texts, cache_dir, norm=self.cfg.data.text_norm, log=self.log)
        self.stacks = {"item": (q.item_levels, q.item_codes)}
        self.rqvae = RQVAE(tuple(m.mlp_hidden), m.dim, self.constants["item_text"].shape[1], q.item_levels, q.item_codes,
                           decoder_on=self.cfg.loss.recon_weight > 0)
        self.rows = {"targets": np.arange(1, self.data.num_items + 1, dtype=np.int32)}
        self.row_ids = list(self.data.item_ids)
        self._table = jax.jit(lambda p, c: self._items(p, c, True)[0])
        return SASRec(mode=GIVEN, **self._sasrec_args())

    def _codes_source(self) -> str:
        return "codes learned end to end"

    def init(self, key, sample, constants):
        k = jax.random.split(key, 5)
        m = self.cfg.model
        params = {"sasrec": self.sasrec.init(k[0], sample["inputs"],
                                             item_table=jnp.zeros((self.data.num_items + 1, m.dim)))["params"]}
        params.update(self.rqvae.init(constants["item_text"][:2], k[1], k[2], k[3]))
        if m.item_repr == "unified":
            params["id_embedding"] = 0.02 * jax.random.normal(k[4], (self.data.num_items + 1, m.dim))
        return params

    def _items(self, params, constants, on, key=None):
        """(table [I + 1, d] with row 0 = 0, quantizer output over items 1..I, reconstruction loss:
        over all items, or over ``loss.recon_items`` drawn uniformly with `key`; 0 when off)."""
        x = constants["item_text"][1:]
        z, q = self.rqvae.quantize(params, x, self.cfg.quantizer)
        zq = jnp.where(on, q.z_q, z)  # before the k-means init: the unquantized projection
        table = zq + params["id_embedding"][1:] if "id_embedding" in params else zq
        recon = jnp.zeros(())
        if self.rqvae.decoder_on and key is not None:
            zq_recon = zq
            sample = self.cfg.loss.recon_items
            if 0 < sample < self.data.num_items:
                pick = jax.random.randint(key, (sample,), 0, self.data.num_items)
                x, zq_recon = x[pick], zq[pick]
            recon = self.rqvae.reconstruction_error(params, zq_recon, x)
        return jnp.concatenate([jnp.zeros_like(table[:1]), table]), q, recon

    def item_table(self, params, constants):
        return self._table(params, constants)

    def loss(self, params, batch, constants, key, step):
        key, recon_key = jax.random.split(key)
        table, q, recon = self._items(params, constants, quantize_on(step, self.cfg.quantizer), recon_key)
        rec = sasrec_loss(params["sasrec"], batch, self.sasrec, dropout_rng=key, item_table=table,
                          candidates=constants.get("known_items"), capacity=self.capacity)
        qloss = jnp.where(quantize_on(step, self.cfg.quantizer), q.loss, 0.0)
        loss = rec + self.cfg.loss.quant_weight * qloss + self.cfg.loss.recon_weight * recon
        metrics = {"loss": loss, "rec": rec, "recon": recon, "qloss_item": q.loss, "qerr_item": q.recon_error,
                   "dropped_targets": dropped_targets(batch["targets"], self.capacity)}
        return loss, {"metrics": metrics, "codes": {"item": q.codes}, "residuals": {"item": q.residuals}}
