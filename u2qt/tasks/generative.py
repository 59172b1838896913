"""Generative retrieval (TIGER, Rajput et al. 2023) on the one train loop: the model of
``u2qt/models/tiger.py`` learns to decode the next item's semantic ID from the user's history, and
constrained beam search (``u2qt/models/decoding.py``) turns it into a ranked list of items, judged
by the same leave-one-out full-ranking protocol as SASRec (``LeaveOneOut``).

The ID table (``model.codes_path``): a tokenizer run's ``semantic_ids.parquet`` (the DAS item
tokenizer or the plain RQ-VAE), another project's index in the LETTER / GRID JSON layout, or
``random`` (codes of the same shape drawn at random: the ablation's baseline). Each item's ID is
its codes plus the de-dup token (unique per item), so the last decoded level names one item.

Training rows: every position of every training sequence that has at least one item before it
(history = the up to ``data.max_history`` items before, target = the item), with the user's
hashed token (``model.user_buckets``). Evaluation: the ``eval.beam`` best IDs of each case, best
first; a target outside them ranks after every decoded item (it has no score), which is exact for
Recall/NDCG@k with k ≤ beam. The report adds the share of unconstrained beams that decode to no
item (``invalid_rate_unconstrained@k``), TIGER's invalid-ID rate.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from u2qt.data.sequences import position_examples
from u2qt.data.tables import DataError
from u2qt.eval import ranking
from u2qt.models.decoding import NEG, PrefixIndex, beam_search
from u2qt.models.tiger import BOS, Tiger, tiger_loss
from u2qt.prep.ids import user_buckets
from u2qt.quant.semantic_ids import SemanticIds, dedup_tokens
from u2qt.tasks.core import EXAMPLE_ROWS, ServingFunction
from u2qt.tasks.recommender import LeaveOneOut


def random_ids(num_items: int, level_sizes: tuple[int, ...], seed: int) -> np.ndarray:
    """[num_items, L + 1]: random codes of the given sizes plus the de-dup token."""
    codes = np.random.default_rng(seed).integers(0, level_sizes, size=(num_items, len(level_sizes)))
    return np.concatenate([codes, dedup_tokens(codes)[:, None]], 1).astype(np.int32)


class GenerativeRetrievalTask(LeaveOneOut):
    """TIGER; capabilities: Evaluates, Servable."""
    name = "generative_retrieval"
    model_keys = ("history", "user", "target")
    row_kind = "position"

    def __init__(self, cfg, cache_dir: str, log=print):
        m, d = cfg.model, cfg.data
        self._read(cfg, log)
        ids = self._id_table()                                                  # [I, L + 1]
        sizes = tuple(int(x) for x in ids.max(0) + 1)
        self.model = Tiger(level_sizes=sizes, user_buckets=m.user_buckets, max_history=d.max_history,
                           d_model=m.dim, heads=m.num_heads, d_kv=m.head_dim, mlp=m.mlp_dim,
                           encoder_layers=m.encoder_layers, decoder_layers=m.decoder_layers, dropout=m.dropout,
                           dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[m.dtype])
        self.index = PrefixIndex.build(ids, k_max=max(sizes))
        buckets = user_buckets(self.data.user_ids, m.user_buckets)
        rows = position_examples(self.split.train, d.max_history, seed=cfg.seed)
        users = np.repeat(np.arange(len(self.split.train)), [len(s) for s in self.split.train]).astype(np.int32)
        keep = rows["history"][:, -1] > 0  # a position with no item before it predicts from nothing
        self.examples = {"history": rows["history"][keep], "user": buckets[users[keep]], "target": rows["target"][keep]}
        if not len(self.examples["target"]):
            raise DataError(f"{d.path}: no training positions are left once the validation and test items are held out")
        self.constants = {"codes": np.concatenate([np.zeros((1, ids.shape[1]), np.int32), ids]),  # row 0: padding
                          "user_bucket": buckets}
        self._decode = jax.jit(self._decode_fn, static_argnames=("beams", "constrained"))
        log(f"data: {self.data.num_items:,} items with IDs of {len(sizes)} levels (sizes {list(sizes)}) from "
            f"{m.codes_path}; {len(self.examples['target']):,} training positions, {len(self.valid_cases):,} "
            f"validation / test cases, {len(self.cold)} cold items")

    def _id_table(self) -> np.ndarray:
        m = self.cfg.model
        if m.codes_path == "random":
            return random_ids(self.data.num_items, tuple(m.random_levels), self.cfg.seed)
        if not m.codes_path:
            raise DataError("config model.codes_path is empty: give a semantic-ID table (a tokenizer run's "
                            "semantic_ids.parquet, a LETTER/GRID index .json) or 'random'")
        table = SemanticIds.read(m.codes_path).aligned(self.data.item_ids, where=m.codes_path)
        return table.full_ids().astype(np.int32)

    # -------------------------------------------------------------- core
    def init(self, key, sample, constants):
        return self.model.init(key, sample["history"], sample["user"], sample["target"],
                               jnp.asarray(constants["codes"]))["params"]

    def loss(self, params, batch, constants, key, step):
        loss, metrics = tiger_loss(self.model, params, batch, constants["codes"], dropout_rng=key)
        return loss, {"metrics": metrics}

    # -------------------------------------------------------------- decoding
    def _decode_fn(self, params, constants, history, user, beams: int, constrained: bool = True, index=None):
        """history [B, H], user buckets [B] → (items, log-probabilities, codes, valid), each [B, beams, ...].
        ``index``: the prefix index (an argument, not a constant baked into the compiled program)."""
        model, bound = self.model, self.model.bind({"params": params})
        tokens, mask = bound.encoder_tokens(history, user, constants["codes"])
        cross = bound.cross_kv(bound.encode(tokens, mask))

        def step(token, level, cache):
            hidden, cache = bound.decode_step(token, level, cache, cross, mask)
            return jax.nn.log_softmax(bound.level_logits(hidden, level), -1), cache

        token_of = lambda code, level: model.first_code + jnp.asarray(model.offsets)[level] + code
        index = self.index if index is None else index
        return beam_search(step, bound.empty_cache(history.shape[0], beams), index, history.shape[0],
                           beams, model.levels, BOS, token_of, constrained)

    def decode(self, params, constants, history, users, beams: int | None = None, constrained: bool = True):
        """The decoded items of cases (user rows ``users``), best first."""
        buckets = jnp.asarray(constants["user_bucket"])[users]
        return self._decode(params, constants, jnp.asarray(history), buckets, beams=beams or self.cfg.eval.beam,
                            constrained=constrained, index=self.index)

    # -------------------------------------------------------------- Evaluates
    def _cut(self, history) -> np.ndarray:
        """A batch of histories cut to the shortest ``eval.length_buckets`` length that holds
        the longest of them (the same decoding, less padding; one compile per bucket)."""
        history = np.asarray(history)
        buckets = tuple(self.cfg.eval.length_buckets) or (history.shape[1],)
        need = int((history > 0).sum(1).max(initial=0))
        return history[:, -next((k for k in buckets if k >= need), history.shape[1]):]

    def ranks(self, params, constants, cases: ranking.EvalCases, desc: str = "evaluation") -> np.ndarray:
        num_items = self.data.num_items

        def scores(b):  # the decoded items get their log-probabilities, every other item NEG
            items, logp, _, valid = self.decode(params, constants, self._cut(b["history"]), b["user"])
            rows = jnp.arange(items.shape[0])[:, None]
            return jnp.full((items.shape[0], num_items + 1), NEG).at[rows, items].set(jnp.where(valid, logp, NEG))

        # Cases sorted by history length, so most batches decode a short window; ranks come back
        # in the cases' own order.
        order = np.argsort((cases.history > 0).sum(1), kind="stable")
        by_length = ranking.EvalCases(users=cases.users[order], history=cases.history[order],
                                      targets=cases.targets[order])
        ranks = np.empty(len(cases), np.int64)
        ranks[order] = ranking.evaluate_ranks(scores, by_length, self.cfg.eval.batch_size, log=self.log, desc=desc)
        return ranks

    def report(self, params, constants) -> dict:
        out = super().report(params, constants)
        n = min(self.cfg.eval.invalid_rate_cases, len(self.test_cases))
        k = min(10, self.cfg.eval.beam)
        invalid = []
        for start in range(0, n, self.cfg.eval.batch_size):
            take = slice(start, min(start + self.cfg.eval.batch_size, n))
            _, _, _, valid = self.decode(params, constants, self._cut(self.test_cases.history[take]),
                                         self.test_cases.users[take], constrained=False)
            invalid.append(1.0 - np.asarray(valid[:, :k], np.float32))
        out[f"invalid_rate_unconstrained@{k}"] = float(np.concatenate(invalid).mean())
        out["invalid_rate_cases"] = n
        return out

    # -------------------------------------------------------------- Servable
    def serving_functions(self):
        beams = self.cfg.eval.beam

        def top_k(params, constants, history, user_bucket):
            items, logp, _, valid = self._decode_fn(params, constants, history, user_bucket, beams=beams)
            return jnp.where(valid, logp, NEG), items

        return {"top_k": ServingFunction(
            top_k, {"history": ((None, self.cfg.data.max_history), np.int32), "user_bucket": ((None,), np.int32)},
            f"a left-padded history of item indices and the user's hashed bucket → the {beams} decoded items "
            f"(log-probabilities, item indices), best first",
            example=(self.test_cases.history[:EXAMPLE_ROWS],
                     np.asarray(self.constants["user_bucket"])[self.test_cases.users[:EXAMPLE_ROWS]]))}
