"""Beam search over semantic IDs, constrained to the IDs of real items.

The constraint is a prefix index built from the ID table as sorted arrays (no Python trie, so it
is jittable and its memory is O(N · L) whatever the code vocabulary):

    node 0 is the empty prefix; the prefixes of length l + 1 are numbered in sorted order of
    key = parent_node · K_max + code, and ``keys[l]`` is that sorted int32 array.

A beam at node n may extend with code c iff ``n · K_max + c`` is in ``keys[l]`` (one
``searchsorted``), and its position there is the child's node. After the last level the node is
a full ID, and ``leaf_items`` maps it to the item. Every beam that survives therefore ends on an
item: no decoded ID is ever invalid. Unconstrained decoding (``constrained=False``) lets any code
through and marks the beams whose ID is not an item (``valid``) — TIGER's invalid-ID rate.

``beam_search`` is one ``lax.scan`` over the code levels (one compile for every batch); at each
level it asks ``step(token, level, state)`` for the level's log-probabilities and keeps the
``beams`` best extensions of all beams by total log-probability.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1e9


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrefixIndex:
    keys: tuple[jax.Array, ...]  # per level: sorted int32 keys of the prefixes one code longer
    leaf_items: jax.Array        # int32 [N]: the item of each full ID's node
    k_max: int = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def build(cls, codes: np.ndarray, items: np.ndarray | None = None, k_max: int | None = None) -> "PrefixIndex":
        """codes [N, L] (unique rows) of items ``items`` [N] (default 1..N)."""
        codes = np.asarray(codes, np.int64)
        n, levels = codes.shape
        items = np.arange(1, n + 1, dtype=np.int32) if items is None else np.asarray(items, np.int32)
        if len(np.unique(codes, axis=0)) != n:
            raise ValueError("the ID table has duplicate rows: a prefix index needs unique IDs (add the de-dup level)")
        k_max = int(codes.max()) + 1 if k_max is None else k_max
        if n * k_max >= 2**31:
            raise ValueError(f"{n:,} IDs × {k_max} codes per level overflow the int32 prefix keys")
        node = np.zeros(n, np.int64)
        keys = []
        for level in range(levels):
            key = node * k_max + codes[:, level]
            level_keys = np.unique(key)
            keys.append(jnp.asarray(level_keys, jnp.int32))
            node = np.searchsorted(level_keys, key)
        leaf_items = np.zeros(n, np.int32)
        leaf_items[node] = items
        return cls(tuple(keys), jnp.asarray(leaf_items), k_max)

    def children(self, level: int, node: jax.Array) -> tuple[jax.Array, jax.Array]:
        """node [...] → (child node, exists) for every code, each [..., K_max]."""
        keys = self.keys[level]
        key = node[..., None] * self.k_max + jnp.arange(self.k_max)
        pos = jnp.clip(jnp.searchsorted(keys, key), 0, keys.shape[0] - 1)
        return pos.astype(jnp.int32), (keys[pos] == key) & (node[..., None] >= 0)


def beam_search(step: Callable, state: Any, index: PrefixIndex, batch: int, beams: int, levels: int,
                bos: int, token_of: Callable, constrained: bool = True):
    """The ``beams`` best code sequences for each of ``batch`` rows.

    step(token [B, W], level, state) -> (log-probabilities [B, W, K_max], state): the model's
    distribution over level ``level``'s codes after the beam's previous codes (``token`` is the
    previous level's token, BOS at level 0); the state's leading axes are [B, W].
    token_of(code [B, W], level) -> token [B, W] fed at the next level.
    Returns (items [B, W], log-probabilities [B, W] best first, codes [B, W, L], valid [B, W]).
    Beams that are not items (unconstrained) or do not exist (fewer IDs than beams) have
    valid = False; in constrained search the latter also have log-probability NEG.
    """
    k = index.k_max
    init = {"token": jnp.full((batch, beams), bos, jnp.int32),
            "score": jnp.tile(jnp.asarray([0.0] + [NEG] * (beams - 1), jnp.float32), (batch, 1)),
            "node": jnp.zeros((batch, beams), jnp.int32),
            "codes": jnp.zeros((batch, beams, levels), jnp.int32),
            "state": state}

    def body(carry, level):
        logp, state = step(carry["token"], level, carry["state"])
        child = [None] * levels
        exists = [None] * levels
        # The level is traced: ask every level's index and pick (levels are few).
        for l in range(levels):
            child[l], exists[l] = index.children(l, carry["node"])
        child = jnp.stack(child)[level]
        exists = jnp.stack(exists)[level]
        if constrained:
            logp = jnp.where(exists, logp, NEG)
        total = carry["score"][..., None] + logp                                # [B, W, K]
        top, flat = jax.lax.top_k(total.reshape(batch, beams * k), beams)
        parent, code = flat // k, flat % k
        pick = lambda x: jnp.take_along_axis(x, parent.reshape(parent.shape + (1,) * (x.ndim - 2)), 1)
        node = jnp.take_along_axis(jnp.where(exists, child, -1).reshape(batch, beams * k), flat, 1)
        codes = pick(carry["codes"]).at[:, :, level].set(code)
        new_state = jax.tree.map(pick, state)
        return {"token": token_of(code, level), "score": top, "node": node, "codes": codes,
                "state": new_state}, None

    out, _ = jax.lax.scan(body, init, jnp.arange(levels))
    valid = (out["node"] >= 0) & (out["score"] > NEG / 2)
    items = jnp.where(valid, index.leaf_items[jnp.maximum(out["node"], 0)], 0)
    return items, out["score"], out["codes"], valid
