"""EfficientRec (Quan et al., arXiv 2401.09693) on the one train loop: users without an ID row
(``u2qt/models/efficientrec.py``), judged by the leave-one-out full-ranking protocol every
recommender here shares (``LeaveOneOut``), plus pruned ranking through soft clusters.

Data (``data.reader``): an LC-Rec directory (Amazon Beauty / Office, or any other; no
interaction values) or MovieLens-1M's GroupLens files (ratings as values, events ordered by
timestamp). Unseen users: a seeded ``data.unseen_fraction`` of the evaluated users is removed
from training entirely (no training row, no edge in the graph, no count in the popularity or the
shortlists); their histories appear only in their validation and test cases.

Training rows: one per seen user, their latest ``data.train_window`` training interactions. Each
step draws, per row, ``loss.targets_per_row`` target positions among them (without repeats); for
each, the user is encoded from the up to ``data.max_history`` interactions before it. The loss:
    L = L_next + w_view · L_view + w_u2i · L_u2i + w_cluster · (L_assign + w_balance · L_balance)
  L_next   full softmax over all items of the next item (``u2qt.losses.item_softmax_loss``)
  L_view   InfoNCE between the encodings of two augmented views of the row's latest history
           (item dropout ``loss.view_dropout``, then a random crop keeping ``loss.view_crop``)
  L_u2i    InfoNCE between the user and their next item's embedding (one target per row,
           in-batch negatives)
  L_assign, L_balance   the cluster term (``cluster_agreement_loss``) on stopped gradients: the
           clusters learn to put users with their next items, and never bend the embeddings
Both InfoNCE terms use ``loss.temperature``. With ``model.user_table`` (the ID-table baseline)
the user is a learned row propagated through the graph, and L_view does not apply.

Report (the test split of the selected parameters): the shared full-ranking metrics; seen vs
unseen users; pruned ranking (each user scores only the union of the shortlists of their
``eval.top_clusters`` clusters) for each of ``eval.shortlist_sizes`` with the exact fraction of
the catalogue scored; users/s of full and pruned top-10 inference; the popularity baseline under
the same protocol; parameter count and inference bytes.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from u2qt.data.lcrec import read_lcrec
from u2qt.data.movielens import read_movielens
from u2qt.data.sequences import leave_one_out
from u2qt.data.tables import DataError, settle_warnings
from u2qt.eval import ranking
from u2qt.losses import info_nce, item_softmax_loss
from u2qt.models.efficientrec import (EfficientRec, bipartite_graph, check_history, cluster_agreement_loss,
                                      cluster_shortlists, interaction_item_scores, ranked_item_scores, routed)
from u2qt.tasks.recommender import LeaveOneOut

READERS = ("lcrec", "movielens")
GRAPH_KEYS = ("edge_user", "edge_item", "edge_norm")


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Users' item sequences (indices 1..I, oldest first) with a value per interaction."""
    user_ids: list[str]
    item_ids: list[str]       # item index i + 1 <-> item_ids[i]
    sequences: list[np.ndarray]
    values: list[np.ndarray]  # float32, aligned with sequences (1 where the data have none)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def read_interactions(d, log=print) -> tuple[Interactions, list[str]]:
    """The data of ``data.reader`` as sequences with values, and the data warnings."""
    if d.reader == "lcrec":
        data = read_lcrec(d.path, max_description_chars=d.max_description_chars)
        log(f"data: {data.report.summary()}")
        values = [np.ones(s.size, np.float32) for s in data.sequences]
        return (Interactions(data.user_ids, data.item_ids, data.sequences, values),
                settle_warnings(data.report.warnings, d.strict, log))
    if d.reader != "movielens":
        raise DataError(f"config data.reader={d.reader!r}; known: {READERS}")
    tables, report = read_movielens(d.path)
    log(str(report))
    item_ids = tables.items["item_id"].astype(str).tolist()
    user_ids = tables.users["user_id"].astype(str).tolist()
    ev = tables.events
    item = ev["item_id"].map({k: i + 1 for i, k in enumerate(item_ids)}).to_numpy(np.int64)
    user = ev["user_id"].map({k: u for u, k in enumerate(user_ids)}).to_numpy(np.int64)
    # Per user in time order; equal timestamps by item index (as u2qt.data.examples orders them).
    order = np.lexsort((item, ev["timestamp"].to_numpy(), user))
    user, item, value = user[order], item[order], ev["value"].to_numpy(np.float32)[order]
    bounds = np.searchsorted(user, np.arange(len(user_ids) + 1))
    sequences = [item[a:b].astype(np.int32) for a, b in zip(bounds[:-1], bounds[1:])]
    values = [value[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return Interactions(user_ids, item_ids, sequences, values), settle_warnings(report.warnings, d.strict, log)


def last_items(sequences, values, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``width`` items and values of each sequence, left-padded with 0: [U, width] each."""
    items = np.zeros((len(sequences), width), np.int32)
    vals = np.zeros((len(sequences), width), np.float32)
    for u, (s, v) in enumerate(zip(sequences, values)):
        s, v = s[-width:] if width else s[:0], v[-width:] if width else v[:0]
        items[u, width - s.size:], vals[u, width - s.size:] = s, v
    return items, vals


def view_mask(key, mask: jax.Array, dropout: float, crop: float) -> jax.Array:
    """An augmented view of the interactions in ``mask``: each dropped with ``dropout``, then a
    random contiguous crop of ceil(crop · n) of them; a view left empty keeps the crop alone."""
    k1, k2 = jax.random.split(key)
    n = jnp.sum(mask, 1)
    length = jnp.maximum(jnp.ceil(crop * n), 1.0)
    start = jnp.floor(jax.random.uniform(k1, n.shape) * (n - length + 1))  # in ages (0 = most recent)
    rank = jnp.cumsum(mask[:, ::-1], 1)[:, ::-1] - 1                        # age among the masked ones
    cropped = mask & (rank >= start[:, None]) & (rank < (start + length)[:, None])
    kept = cropped & (jax.random.uniform(k2, mask.shape) >= dropout)
    return jnp.where(jnp.any(kept, 1, keepdims=True), kept, cropped)


class EfficientRecTask(LeaveOneOut):
    """EfficientRec; capabilities: Evaluates."""
    name = "efficientrec"
    model_keys = ("items", "values", "user")
    row_kind = "user"

    def __init__(self, cfg, cache_dir: str, log=print):
        m, d = cfg.model, cfg.data
        self._read(cfg, log)
        data, split = self.data, self.split
        I, U, H = data.num_items, len(data.user_ids), d.max_history
        # Values standardized over the training interactions (all equal: 0 everywhere).
        train_values = [v[:len(t)] for v, t in zip(self.values, split.train)]
        seen_values = np.concatenate(train_values + [np.zeros(0, np.float32)])
        mean, std = (float(seen_values.mean()), float(seen_values.std())) if seen_values.size else (1.0, 0.0)
        self.value_mean = mean if mean > 0 else 1.0
        standard = [(v - mean) / std if std > 0 else np.zeros_like(v) for v in self.values]
        train_standard = [v[:len(t)] for v, t in zip(standard, split.train)]

        graph = bipartite_graph(split.train, I, train_values)
        self.constants = {k: graph[k] for k in GRAPH_KEYS}
        self.edge_weight = graph["edge_value"] / self.value_mean  # the shortlists' v'
        items, values = last_items(split.train, train_standard, d.train_window)
        trains = (items > 0).sum(1) >= 2  # a target with at least one item before it
        self.examples = {"items": items[trains], "values": values[trains],
                         "user": np.flatnonzero(trains).astype(np.int32)}
        if not len(self.examples["user"]):
            raise DataError(f"{d.path}: no seen user has the 2 training interactions a training row needs")
        # Each user's profile for the shortlists: the last H training interactions.
        self.train_profile = last_items(split.train, train_standard, H)
        # The value histories of the cases, by user row (a user has one case per split).
        self.case_values = {}
        for which, cases in (("valid", self.valid_cases), ("test", self.test_cases)):
            end = -2 if which == "valid" else -1
            table = np.zeros((U, H), np.float32)
            for u in cases.users:
                v = standard[u][:end][-H:]
                table[u, H - v.size:] = v
            self.case_values[which] = table
        self.model = EfficientRec(num_items=I, dim=m.dim, max_history=H, head_hidden=tuple(m.head_hidden),
                                  graph_layers=m.graph_layers, clusters=m.clusters, membership=m.membership,
                                  user_table=m.user_table, num_users=U)
        self._tables = jax.jit(lambda p, c: self.model.tables(p, c))
        self._full = jax.jit(self.model.full_scores)
        self._pruned = jax.jit(self._pruned_scores, static_argnames="top_m")
        self._top_full = jax.jit(self.model.full_top_k, static_argnames="k")
        self._top_pruned = jax.jit(self.model.pruned_top_k, static_argnames=("k", "top_m"))
        self._profiles = jax.jit(self._encode_profiles)
        self._ranked = jax.jit(self._ranked_batch, static_argnames="depth")
        log(f"data: {I:,} items, {U:,} users ({int(self.unseen.sum()):,} unseen, held out of training), "
            f"{len(self.examples['user']):,} training rows, {len(graph['edge_user']):,} graph edges, "
            f"{len(self.valid_cases):,} validation / test cases; users as "
            f"{'ID-table rows' if m.user_table else 'functions of their interactions (no ID row)'}")

    # -------------------------------------------------------------- data
    def _read(self, cfg, log) -> None:
        d = cfg.data
        self.cfg, self.log = cfg, log
        data, self.data_warnings = read_interactions(d, log)
        split = leave_one_out(data.sequences)
        evaluated = np.flatnonzero(split.evaluated)
        count = int(round(d.unseen_fraction * evaluated.size))
        unseen = np.zeros(len(data.sequences), bool)
        unseen[np.random.default_rng(d.unseen_seed).choice(evaluated, count, replace=False)] = True
        self.data, self.values, self.unseen = data, data.values, unseen
        # the shared report's cold-item rows do not apply
        self._set_split(dataclasses.replace(split, train=[s[:0] if out else s for s, out in zip(split.train, unseen)]),
                        np.zeros(0, np.int32))

    # -------------------------------------------------------------- core
    def init(self, key, sample, constants):
        return self.model.init(key)

    def loss(self, params, batch, constants, key, step):
        lo, model = self.cfg.loss, self.model
        tables = model.tables(params, constants)
        items, values = batch["items"], batch["values"]
        b, w = items.shape
        k_cut, k_view1, k_view2 = jax.random.split(key, 3)
        n = jnp.sum(items > 0, 1)
        pos = jnp.arange(w)
        # T target positions per row, drawn without repeats among the items that have one before them.
        can = pos[None, :] >= (w - n + 1)[:, None]
        draw, t = jax.lax.top_k(jnp.where(can, jax.random.uniform(k_cut, (b, w)), -1.0), min(lo.targets_per_row, w))
        valid = draw >= 0                                                          # [B, T]
        target = jnp.where(valid, jnp.take_along_axis(items, t, 1), 0)
        ages = t[:, :, None] - 1 - pos[None, None, :]                              # [B, T, W]
        mask = (ages >= 0) & (ages < model.max_history) & (items > 0)[:, None, :] & valid[:, :, None]
        encode = lambda a, v, m: model.encode(params, tables.history, items, a, v, m, batch["user"], tables.users)
        user = encode(ages, values[:, None, :], mask)                               # [B, T, d]
        flat_user, flat_valid = user.reshape(b * t.shape[1], -1), valid.reshape(-1)
        next_item = item_softmax_loss(flat_user, tables.score, target.reshape(-1, 1), flat_valid[:, None].astype(jnp.float32))
        next_item = jnp.sum(next_item) / jnp.maximum(jnp.sum(flat_valid), 1)
        target_emb = tables.score[target]
        u2i = info_nce(user[:, 0], target_emb[:, 0], valid[:, 0], lo.temperature)  # one (random) target per row
        if model.user_table:
            view = jnp.zeros(())
        else:  # two views of the row's latest history (the up to max_history items of the window)
            last_ages = jnp.broadcast_to(w - 1 - pos, (b, w))
            last = (last_ages < model.max_history) & (items > 0)
            view = info_nce(encode(last_ages, values, view_mask(k_view1, last, lo.view_dropout, lo.view_crop)),
                            encode(last_ages, values, view_mask(k_view2, last, lo.view_dropout, lo.view_crop)),
                            n >= 2, lo.temperature)
        assign, balance = cluster_agreement_loss(model.memberships(params, jax.lax.stop_gradient(flat_user)),
                                                 model.memberships(params, jax.lax.stop_gradient(target_emb.reshape(flat_user.shape))),
                                                 flat_valid)
        loss = (next_item + lo.view_weight * view + lo.u2i_weight * u2i
                + lo.cluster_weight * (assign + lo.balance_weight * balance))
        return loss, {"metrics": {"loss": loss, "next_item": next_item, "view_nce": view, "u2i_nce": u2i,
                                  "cluster_assign": assign, "cluster_balance": balance}}

    # -------------------------------------------------------------- scoring
    def _pruned_scores(self, params, tables, shortlists, history, values, users, top_m: int):
        """([B, I + 1] with only the candidates of the user's top-m clusters scored, -inf elsewhere
        (for the shared rank computation); [B] how many distinct items were scored)."""
        cand, unique, scores = self.model.candidate_scores(params, tables, shortlists, history, values, users, top_m)
        rows = jnp.arange(cand.shape[0])[:, None]
        full = jnp.full((cand.shape[0], tables.score.shape[0]), -jnp.inf).at[rows, cand].max(
            jnp.where(cand > 0, scores, -jnp.inf))
        return full.at[:, 0].set(-jnp.inf), jnp.sum(unique, 1)

    def _encode_profiles(self, params, tables, history, values):
        users = jnp.arange(history.shape[0], dtype=jnp.int32)
        return self.model.memberships(params, self.model.encode_history(params, tables, history, values, users))

    def _ranked_batch(self, params, tables, history, values, users, weight, acc, depth: int):
        """``acc`` + the ranked item scores of one batch of training users (``weight`` 0 = padding)."""
        user = self.model.encode_history(params, tables, history, values, users)
        member = routed(self.model.memberships(params, user), self.cfg.eval.top_clusters) * weight[:, None]
        _, top = jax.lax.top_k((user @ tables.score.T).at[:, 0].set(-jnp.inf), depth)
        return acc + ranked_item_scores(member, top, self.data.num_items)

    def item_scores(self, params, constants, tables) -> jax.Array:
        """[I + 1, C] what the shortlists rank items by (``eval.shortlist_from``), from the training
        users only: "model", each user's own top ``eval.shortlist_depth`` of the full ranking
        weighted by rank and membership, for the ``eval.top_clusters`` clusters that serve the user; "interactions", their interactions weighted by membership."""
        history, values = self.train_profile
        e = self.cfg.eval
        if e.shortlist_from == "interactions":
            member = self._profiles(params, tables, jnp.asarray(history), jnp.asarray(values))
            return interaction_item_scores(member, constants["edge_user"], constants["edge_item"],
                                           jnp.asarray(self.edge_weight), self.data.num_items)
        rows = np.flatnonzero((history > 0).any(1) & ~self.unseen).astype(np.int32)
        bs, depth = e.batch_size, min(e.shortlist_depth, self.data.num_items)
        acc = jnp.zeros((self.data.num_items + 1, self.model.clusters), jnp.float32)
        for start in range(0, len(rows), bs):
            b = rows[start:start + bs]
            weight = np.zeros(bs, np.float32)
            weight[:len(b)] = 1.0
            b = _pad(b, bs)
            acc = self._ranked(params, tables, jnp.asarray(history[b]), jnp.asarray(values[b]), jnp.asarray(b),
                               jnp.asarray(weight), acc, depth=depth)
        return acc

    def shortlists(self, params, constants, tables, size: int, item_scores=None) -> jax.Array:
        """[C, L] per-cluster shortlists (``item_scores``: from ``self.item_scores``, computed if None)."""
        if item_scores is None:
            item_scores = self.item_scores(params, constants, tables)
        return cluster_shortlists(item_scores, size)

    def encode_users(self, params, constants, history, values=None) -> jax.Array:
        """User vectors [B, d] of any users (also ones never seen in training) from their
        interactions: a left-padded history [B, H] of item indices and their standardized values
        (None: no values). Checked first: an empty history or an unknown item is refused."""
        if self.model.user_table:
            raise ValueError("model.user_table=True: users are ID-table rows, not functions of their interactions")
        history = np.asarray(history)
        check_history(history, self.data.num_items)
        values = np.zeros(history.shape, np.float32) if values is None else np.asarray(values, np.float32)
        tables = self._tables(params, constants)
        return self.model.encode_history(params, tables, jnp.asarray(history), jnp.asarray(values),
                                         jnp.zeros(history.shape[0], jnp.int32))

    # -------------------------------------------------------------- Evaluates
    def _which(self, cases) -> str:
        return "valid" if cases is self.valid_cases else "test"

    def ranks(self, params, constants, cases: ranking.EvalCases, desc: str = "evaluation") -> np.ndarray:
        tables = self._tables(params, constants)
        values = jnp.asarray(self.case_values[self._which(cases)])
        return ranking.evaluate_ranks(lambda b: self._full(params, tables, b["history"], values[b["user"]], b["user"]),
                                      cases, self.cfg.eval.batch_size, log=self.log, desc=desc)

    def pruned_ranks(self, params, constants, cases, tables, shortlists) -> tuple[np.ndarray, float]:
        """(ranks, mean fraction of the catalogue scored) of the pruned ranking."""
        values = jnp.asarray(self.case_values[self._which(cases)])
        counts = []

        def score(b):
            s, n = self._pruned(params, tables, shortlists, b["history"], values[b["user"]], b["user"],
                                top_m=self.cfg.eval.top_clusters)
            counts.append(n)
            return s

        ranks = ranking.evaluate_ranks(score, cases, self.cfg.eval.batch_size)
        scored = np.concatenate(jax.device_get(counts))[:len(cases)]  # the last batch's padding cut off
        return ranks, float(scored.mean() / self.data.num_items)

    def users_per_second(self, top_fn, cases, values) -> float:
        """Users/s of a jitted top-10 function over the cases (batches of eval.batch_size; the
        first batch, which compiles, is not timed)."""
        bs = self.cfg.eval.batch_size
        starts = list(range(0, len(cases) - bs + 1, bs)) or [0]
        batch = lambda s: (jnp.asarray(_pad(cases.history[s:s + bs], bs)), values[jnp.asarray(_pad(cases.users[s:s + bs], bs))],
                           jnp.asarray(_pad(cases.users[s:s + bs], bs)))
        jax.block_until_ready(top_fn(*batch(starts[0])))
        timed = starts[1:] or starts
        inputs = [batch(s) for s in timed]
        t0 = time.perf_counter()
        for inp in inputs:
            jax.block_until_ready(top_fn(*inp))
        return len(timed) * bs / (time.perf_counter() - t0)

    def report(self, params, constants) -> dict:
        out = super().report(params, constants)
        e = self.cfg.eval
        cases = self.test_cases
        ranks = self.ranks(params, constants, cases, "test")
        unseen = self.unseen[cases.users]
        for name, rows in (("seen", ~unseen), ("unseen", unseen)):
            out[f"{name}_cases"] = int(rows.sum())
            if rows.any():
                out.update({f"{name}_{k}": v for k, v in ranking.metrics_from_ranks(ranks[rows]).items()})
        if unseen.any() and (~unseen).any() and out["seen_Recall@10"] > 0:
            out["unseen_over_seen_Recall@10"] = out["unseen_Recall@10"] / out["seen_Recall@10"]
        counts = ranking.item_counts(self.split.train, self.data.num_items).astype(np.float32)
        popular = jnp.asarray(counts)
        pop = ranking.evaluate_ranks(lambda b: jnp.broadcast_to(popular, (b["history"].shape[0], popular.size)),
                                     cases, e.batch_size)
        out["popularity"] = ranking.metrics_from_ranks(pop)

        tables = self._tables(params, constants)
        values = jnp.asarray(self.case_values["test"])
        out["full_users_per_s"] = self.users_per_second(
            lambda h, v, u: self._top_full(params, tables, h, v, u, k=10), cases, values)
        full_r10 = out["Recall@10"]
        pruned = []
        item_scores = self.item_scores(params, constants, tables)
        for size in e.shortlist_sizes:
            lists = self.shortlists(params, constants, tables, size, item_scores)
            r, fraction = self.pruned_ranks(params, constants, cases, tables, lists)
            row = {"shortlist": int(size), "top_clusters": e.top_clusters, "from": e.shortlist_from,
                   "fraction_scored": fraction,
                   **ranking.metrics_from_ranks(r),
                   "users_per_s": self.users_per_second(
                       lambda h, v, u: self._top_pruned(params, tables, lists, h, v, u, k=10, top_m=e.top_clusters),
                       cases, values)}
            row["recall10_kept"] = row["Recall@10"] / full_r10 if full_r10 > 0 else float("nan")
            rows_unseen = unseen
            if rows_unseen.any():
                row["unseen_Recall@10"] = ranking.metrics_from_ranks(r[rows_unseen])["Recall@10"]
            pruned.append(row)
            self.log(f"pruned ranking, top {e.top_clusters} clusters × {size} items: Recall@10 {row['Recall@10']:.4f} "
                     f"({row['recall10_kept']:.1%} of full), NDCG@10 {row['NDCG@10']:.4f}, "
                     f"{fraction:.2%} of the catalogue scored, {row['users_per_s']:,.0f} users/s")
        out["pruned"] = pruned
        out["parameters"] = int(sum(x.size for x in jax.tree.leaves(params)))
        # What inference holds: the propagated item table instead of the layer-0 one, the rest as is.
        infer = dict(params, item_embedding=tables.history, item_output=tables.score)
        if self.model.user_table:
            infer["user_embedding"] = tables.users
        out["inference_bytes"] = int(sum(x.nbytes for x in jax.tree.leaves(infer))
                                     + max(e.shortlist_sizes) * self.model.clusters * 4)
        self.log(f"test: full Recall@10 {full_r10:.4f}, seen {out.get('seen_Recall@10', float('nan')):.4f} vs unseen "
                 f"{out.get('unseen_Recall@10', float('nan')):.4f}; popularity {out['popularity']['Recall@10']:.4f}; "
                 f"{out['full_users_per_s']:,.0f} users/s full ranking")
        return out


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` padded to ``size`` rows by repeating its first (a fixed shape compiles once)."""
    return rows if len(rows) == size else np.concatenate([rows, np.repeat(rows[:1], size - len(rows), 0)])
