"""EfficientRec (Quan et al., arXiv 2401.09693): users without an ID row. A user is a function of
what they interacted with, soft cluster memberships prune the candidate items, and a graph
encoder over the user–item bipartite graph gives the item embeddings.

Each equation lives in one function, named as the paper (or LightGCN) names it:

- ``bipartite_graph``: the training edges (u, i), one per distinct pair, with the symmetric
  normalisation Â_ui = 1 / sqrt(|N_u| · |N_i|).
- ``propagate`` (LightGCN): e_u^(k+1) = Σ_{i∈N_u} Â_ui e_i^(k),  e_i^(k+1) = Σ_{u∈N_i} Â_ui e_u^(k),
  final e = mean_{k=0..K} e^(k); edge lists and ``jax.ops.segment_sum``, no dense matrix.
  The item side e_i^(0) is learned; the user side e_u^(0) is either recomputed from the user's
  interactions (``profile_users``: the mean of their items' e_i^(0), so a user holds no
  parameter) or, for the ID-table baseline, a learned row per user.
- ``pooling_weights`` / ``user_profile`` (the ID-free user encoder): p_u = Σ_j w_j e_{i_j} over
  the user's last H interactions, w = softmax_j(r[age_j] + α · v_j) with learned recency logits
  r [H] and value weight α (v: the interaction value, standardized; 0 without one), then
  u = p_u + MLP(p_u). Parameters: H + 1 + the MLP's, none per user.
- ``memberships``: soft clusters m_u = σ(u · μ_c + b_c) (sigmoid) or softmax_c(u · μ_c + b_c),
  C centroids μ; items get theirs the same way (for the cluster loss only).
- ``cluster_shortlists``: per cluster, the L items of the largest item score, one of
  - ``interaction_item_scores`` (the paper's): Σ_{(u,i) ∈ train} m_u,c · v'_ui (v' = the
    interaction value over the mean value, 1 without values: "cluster score × rating", summed
    rather than averaged over the training users who touched the item, so an item one user
    touched cannot top a cluster);
  - ``ranked_item_scores`` (ours, the default ``eval.shortlist_from="model"``):
    Σ_{u ∈ train, c ∈ top-m(u)} m_u,c / log2(r_u(i) + 2) over the items at ranks r = 0..N-1 of
    each training user's own full ranking, counting a user only for the m clusters that serve it
    (``routed``): the items the model would recommend to the users the cluster serves, which is
    what pruning must keep (a cluster's most interacted items are its popular past, not what its
    users are recommended next).
- ``cluster_candidates``: a user's candidates = the union of the shortlists of their top-m
  clusters (sorted, duplicates and padding flagged), the only items the pruned ranking scores.
- Scores: s_ui = u · o_i with o_i a second propagated item embedding (the output side; pooling
  reads the input side e_i). With one tied table a user's own items would score highest,
  and the protocol keeps them rankable.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from u2qt.errors import DataError
from u2qt.nn.layers import MLP

MEMBERSHIPS = ("sigmoid", "softmax")


# ----------------------------------------------------------------------------- the graph
def bipartite_graph(sequences, num_items: int, values=None) -> dict[str, np.ndarray]:
    """The training graph of users (rows of ``sequences``) and items 1..I as edge lists.

    One edge per distinct (user, item) pair; its value is the mean value of the pair's
    interactions (1 without values). Returns edge_user, edge_item (int32 [E]), edge_norm
    Â_ui = 1 / sqrt(|N_u| |N_i|) and edge_value (float32 [E])."""
    users, items, vals = [], [], []
    for u, seq in enumerate(sequences):
        seq = np.asarray(seq, np.int64)
        if not seq.size:
            continue
        if seq.min() < 1 or seq.max() > num_items:
            raise ValueError(f"user row {u}: item indices must lie in 1..{num_items}, got {seq.min()}..{seq.max()}")
        v = np.ones(seq.size, np.float64) if values is None else np.asarray(values[u], np.float64)
        uniq, inverse = np.unique(seq, return_inverse=True)
        users.append(np.full(uniq.size, u, np.int32))
        items.append(uniq.astype(np.int32))
        vals.append(np.bincount(inverse, v) / np.bincount(inverse))
    if not users:
        raise ValueError("the training graph has no edges: no user has a training interaction")
    edge_user, edge_item, edge_value = np.concatenate(users), np.concatenate(items), np.concatenate(vals)
    deg_user = np.bincount(edge_user, minlength=len(sequences)).astype(np.float64)
    deg_item = np.bincount(edge_item, minlength=num_items + 1).astype(np.float64)
    norm = 1.0 / np.sqrt(deg_user[edge_user] * deg_item[edge_item])
    return {"edge_user": edge_user, "edge_item": edge_item, "edge_norm": norm.astype(np.float32),
            "edge_value": edge_value.astype(np.float32)}


def profile_users(item0: jax.Array, edge_user, edge_item, num_users: int) -> jax.Array:
    """e_u^(0) of a user without an ID row: the mean of the layer-0 embeddings of their items."""
    total = jax.ops.segment_sum(item0[edge_item], edge_user, num_segments=num_users)
    count = jax.ops.segment_sum(jnp.ones_like(edge_user, jnp.float32), edge_user, num_segments=num_users)
    return total / jnp.maximum(count, 1.0)[:, None]


def propagate(item0: jax.Array, user0: jax.Array, edge_user, edge_item, edge_norm,
              num_layers: int) -> tuple[jax.Array, jax.Array]:
    """LightGCN over the bipartite graph: (final item [I + 1, d], final user [U, d]) embeddings,
    each the mean of layers 0..K."""
    num_items, num_users = item0.shape[0], user0.shape[0]
    w = edge_norm[:, None]
    items, users = item0, user0
    item_sum, user_sum = item0, user0
    for _ in range(num_layers):
        users, items = (jax.ops.segment_sum(w * items[edge_item], edge_user, num_segments=num_users),
                        jax.ops.segment_sum(w * users[edge_user], edge_item, num_segments=num_items))
        item_sum, user_sum = item_sum + items, user_sum + users
    return item_sum / (num_layers + 1), user_sum / (num_layers + 1)


# ----------------------------------------------------------------------------- the user encoder
def pooling_weights(recency: jax.Array, value_weight: jax.Array, ages: jax.Array, values: jax.Array,
                    mask: jax.Array) -> jax.Array:
    """w [B, N] = softmax over the masked interactions of r[age] + α · v (rows with none: all 0)."""
    logits = recency[jnp.clip(ages, 0, recency.shape[0] - 1)] + value_weight * values
    logits = jnp.where(mask, logits, -1e30)
    w = jnp.exp(logits - jnp.max(logits, -1, keepdims=True)) * mask
    return w / jnp.maximum(jnp.sum(w, -1, keepdims=True), 1e-30)


def user_profile(item_table: jax.Array, items: jax.Array, ages: jax.Array, values: jax.Array, mask: jax.Array,
                 recency: jax.Array, value_weight: jax.Array) -> jax.Array:
    """p_u [B, d] = Σ_j w_j e_{i_j}: interaction-weighted pooling of (propagated) item embeddings.
    items [B, N]; ages, values, mask [B, N], or [B, T, N] for T prefixes of the same rows (→ [B, T, d])."""
    w = pooling_weights(recency, value_weight, ages, values, mask)
    return jnp.einsum("b...n,bnd->b...d", w, item_table[items])


def history_inputs(history: jax.Array, values: jax.Array):
    """A left-padded history [B, H] (most recent last) → (items, ages, values, mask)."""
    h = history.shape[1]
    ages = jnp.broadcast_to(jnp.arange(h - 1, -1, -1), history.shape)
    return history, ages, values, history > 0


# ----------------------------------------------------------------------------- clusters
def memberships(x: jax.Array, centroids: jax.Array, bias: jax.Array, kind: str) -> jax.Array:
    """Soft cluster memberships [B, C] of vectors x [B, d]."""
    logits = x @ centroids.T / np.sqrt(x.shape[-1]) + bias
    if kind == "sigmoid":
        return jax.nn.sigmoid(logits)
    if kind == "softmax":
        return jax.nn.softmax(logits, -1)
    raise ValueError(f"membership {kind!r}; known: {MEMBERSHIPS}")


def cluster_agreement_loss(user_m: jax.Array, item_m: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(assignment, balance): -log Σ_c p_u,c p_i,c with p = memberships normalized to sum 1 (user and
    next item in the same cluster), and KL(mean p_u ‖ uniform) over the batch (no collapse)."""
    pu = user_m / jnp.maximum(jnp.sum(user_m, -1, keepdims=True), 1e-9)
    pi = item_m / jnp.maximum(jnp.sum(item_m, -1, keepdims=True), 1e-9)
    m = mask.astype(jnp.float32)
    agree = -jnp.log(jnp.sum(pu * pi, -1) + 1e-9)
    assign = jnp.sum(agree * m) / jnp.maximum(jnp.sum(m), 1.0)
    mean = jnp.sum(pu * m[:, None], 0) / jnp.maximum(jnp.sum(m), 1.0)
    balance = jnp.sum(mean * jnp.log(mean * mean.shape[0] + 1e-9))
    return assign, balance


def interaction_item_scores(user_m: jax.Array, edge_user, edge_item, edge_weight, num_items: int) -> jax.Array:
    """[I + 1, C]: Σ_{(u,i)} m_u,c · weight_ui over the training edges (the paper's shortlists:
    what the users of a cluster interacted with)."""
    return jax.ops.segment_sum(user_m[edge_user] * edge_weight[:, None], edge_item, num_segments=num_items + 1)


def routed(user_m: jax.Array, top_m: int) -> jax.Array:
    """The memberships [B, C] with only each user's top-m clusters kept (the clusters that serve the
    user at inference, ``cluster_candidates``), 0 elsewhere."""
    _, top = jax.lax.top_k(user_m, min(top_m, user_m.shape[1]))
    keep = jnp.zeros(user_m.shape, bool).at[jnp.arange(user_m.shape[0])[:, None], top].set(True)
    return jnp.where(keep, user_m, 0.0)


def ranked_item_scores(user_m: jax.Array, top_items: jax.Array, num_items: int) -> jax.Array:
    """[I + 1, C]: Σ_u m_u,c / log2(r + 2) over the items at rank r of each user's own full ranking
    (``top_items`` [U, N], best first): what the model would recommend to the users of a cluster
    (``user_m`` = ``routed`` memberships: the users the cluster serves)."""
    weight = 1.0 / jnp.log2(jnp.arange(top_items.shape[1], dtype=jnp.float32) + 2.0)   # [N]
    contrib = user_m[:, None, :] * weight[None, :, None]                                # [U, N, C]
    return jax.ops.segment_sum(contrib.reshape(-1, user_m.shape[1]), top_items.reshape(-1),
                               num_segments=num_items + 1)


def cluster_shortlists(item_scores: jax.Array, size: int) -> jax.Array:
    """[C, L] item indices: per cluster the L items of the largest score (``item_scores`` [I + 1, C],
    from ``interaction_item_scores`` or ``ranked_item_scores``), best first; an item of score 0 (no
    user of the cluster reached it) is never listed (0 = padding, when a cluster reaches fewer than
    L items)."""
    score = item_scores.at[0].set(0.0).T                                 # [C, I + 1]
    size = min(size, score.shape[1] - 1)
    top, idx = jax.lax.top_k(score, size)
    return jnp.where(top > 0, idx, 0).astype(jnp.int32)


def cluster_candidates(user_m: jax.Array, shortlists: jax.Array, top_m: int) -> tuple[jax.Array, jax.Array]:
    """The union of the shortlists of each user's top-m clusters: (items [B, m·L] sorted, unique
    [B, m·L] True at the first copy of each real item; padding and repeats are False)."""
    _, top = jax.lax.top_k(user_m, min(top_m, user_m.shape[1]))
    cand = jnp.sort(shortlists[top].reshape(user_m.shape[0], -1), axis=1)
    first = jnp.concatenate([jnp.ones_like(cand[:, :1], bool), cand[:, 1:] != cand[:, :-1]], 1)
    return cand, first & (cand > 0)


# ----------------------------------------------------------------------------- the model
class Tables(NamedTuple):
    """What inference holds after propagation: item rows a history is pooled from, item rows that
    are scored (two tables, so a user's own items need not score highest), and the propagated
    user rows of the ID-table baseline (None without)."""
    history: jax.Array        # [I + 1, d]
    score: jax.Array          # [I + 1, d]
    users: jax.Array | None   # [U, d]


@dataclasses.dataclass(frozen=True)
class EfficientRec:
    """Sizes and switches; the parameters are a dict (``init``), the math the functions above.
    ``num_users``: the user rows of the training graph (a shape, not parameters); with
    ``user_table`` (the ID-table baseline) each of them also has a learned row e_u^(0)."""
    num_items: int
    dim: int
    max_history: int
    head_hidden: tuple[int, ...] = (128,)
    graph_layers: int = 2
    clusters: int = 32
    membership: str = "sigmoid"
    user_table: bool = False
    num_users: int = 1

    def __post_init__(self):
        if self.membership not in MEMBERSHIPS:
            raise ValueError(f"membership {self.membership!r}; known: {MEMBERSHIPS}")
        if self.num_users < 1:
            raise ValueError("the training graph needs num_users >= 1")

    @property
    def head(self) -> MLP:
        return MLP((*self.head_hidden, self.dim))

    def init(self, key: jax.Array) -> dict:
        k = jax.random.split(key, 5)
        params = {
            "item_embedding": 0.1 * jax.random.normal(k[0], (self.num_items + 1, self.dim)),
            "item_output": 0.1 * jax.random.normal(k[4], (self.num_items + 1, self.dim)),
            "recency": jnp.zeros((self.max_history,)),
            "value_weight": jnp.zeros(()),
            "head": self.head.init(k[1], jnp.zeros((1, self.dim)))["params"],
            "centroids": jax.random.normal(k[2], (self.clusters, self.dim)),
            "cluster_bias": jnp.zeros((self.clusters,)),
        }
        if self.user_table:
            params["user_embedding"] = 0.1 * jax.random.normal(k[3], (self.num_users, self.dim))
        return params

    def tables(self, params, graph: dict) -> Tables:
        """The propagated tables (item rows 0 = 0). ``graph``: the edge arrays of
        ``bipartite_graph``; without an ID table the user nodes are recomputed from their items.
        Both item sides (the one a history is pooled from, the one that scores) propagate in
        one pass over the edges, side by side."""
        d = self.dim
        item0 = jnp.concatenate([params["item_embedding"], params["item_output"]], 1).at[0].set(0.0)
        eu, ei, en = graph["edge_user"], graph["edge_item"], graph["edge_norm"]
        if self.user_table:  # the row stands in for both halves' user node
            user0 = jnp.concatenate([params["user_embedding"]] * 2, 1)
        else:
            user0 = profile_users(item0, eu, ei, self.num_users)
        items, users = propagate(item0, user0, eu, ei, en, self.graph_layers)
        items = items.at[0].set(0.0)
        return Tables(items[:, :d], items[:, d:], users[:, :d] if self.user_table else None)

    def encode(self, params, item_table, items, ages, values, mask, user_rows=None, user_table=None) -> jax.Array:
        """u [B, d]: the ID-free encoder on the interactions, or (ID table) the user's propagated
        row; either way through the same residual head u = x + MLP(x)."""
        if self.user_table:
            x = user_table[user_rows]
            x = jnp.broadcast_to(x.reshape(x.shape[:1] + (1,) * (mask.ndim - 2) + x.shape[1:]),
                                 mask.shape[:-1] + x.shape[-1:])  # the same row for every prefix
        else:
            x = user_profile(item_table, items, ages, values, mask, params["recency"], params["value_weight"])
        return x + self.head.apply({"params": params["head"]}, x)

    def memberships(self, params, x) -> jax.Array:
        return memberships(x, params["centroids"], params["cluster_bias"], self.membership)

    def encode_history(self, params, tables, history, values, users) -> jax.Array:
        """u [B, d] from left-padded histories [B, H] and their values (``tables``: ``self.tables``)."""
        items, ages, values, mask = history_inputs(history, values)
        return self.encode(params, tables.history, items, ages, values, mask, users, tables.users)

    def full_scores(self, params, tables, history, values, users) -> jax.Array:
        """[B, I + 1]: s_ui = u · e_i for every item (column 0, padding, is -inf)."""
        user = self.encode_history(params, tables, history, values, users)
        return (user @ tables.score.T).at[:, 0].set(-jnp.inf)

    def candidate_scores(self, params, tables, shortlists, history, values, users, top_m: int):
        """(candidates [B, m·L], unique [B, m·L], scores [B, m·L]): only the items of the user's
        top-m clusters' shortlists are scored."""
        user = self.encode_history(params, tables, history, values, users)
        cand, unique = cluster_candidates(self.memberships(params, user), shortlists, top_m)
        return cand, unique, jnp.einsum("bd,bnd->bn", user, tables.score[cand])

    def full_top_k(self, params, tables, history, values, users, k: int):
        return jax.lax.top_k(self.full_scores(params, tables, history, values, users), k)

    def pruned_top_k(self, params, tables, shortlists, history, values, users, k: int, top_m: int):
        """(scores, items) [B, k] of the candidates only: what serving a user costs with pruning."""
        cand, unique, scores = self.candidate_scores(params, tables, shortlists, history, values, users, top_m)
        best, at = jax.lax.top_k(jnp.where(unique, scores, -jnp.inf), k)
        return best, jnp.take_along_axis(cand, at, 1)


def check_history(history: np.ndarray, num_items: int, where: str = "history") -> None:
    """Clear errors for the inputs a user encoder cannot read: an empty history, an unknown item."""
    history = np.asarray(history)
    if history.ndim != 2:
        raise DataError(f"{where}: expected item indices [users, positions], got shape {history.shape}")
    empty = np.flatnonzero((history > 0).sum(1) == 0)
    if empty.size:
        raise DataError(f"{where}: users {empty[:5].tolist()} have no interactions; an ID-free user is "
                         f"computed from their items, so at least one is needed (recommend popular items instead)")
    bad = (history < 0) | (history > num_items)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{where}: user {row} position {col}: item index {history[row, col]} is not in the "
                         f"catalogue 1..{num_items} (0 = padding): an unknown item has no embedding")
