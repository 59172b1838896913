"""SASRec (Kang & McAuley, ICDM 2018): a causal transformer over the item sequence, with the
item representation chosen by `mode`:
  - "id":       e_i = E_id[i]
  - "semantic": e_i = sum_c E_c[codes[i, c]]            (one table per code position c)
  - "unified":  e_i = E_id[i] + sum_c E_c[codes[i, c]]  (Lin et al. 2025, "Unified semantic and
                ID representation learning for deep recommenders")
  - "given":    e_i = table[i], a table [I + 1, d] the caller passes as `item_table=` (a model
                whose item representations are learned outside, e.g. the unified model trained
                end to end with its quantizer, `u2qt/tasks/recommender.py`); no item parameters.
The same e_i embeds the inputs and scores the next item: logits = h_t · e_i for ALL items i
(full softmax, no sampled negatives); index 0 is padding, never an input and never a class.

Inputs are LEFT-padded with 0 (as `u2qt.eval.ranking.make_eval_cases` builds them) and position
embeddings count from the right end, so the most recent item always sits at position
`max_len - 1`: a history left-padded to any length T <= max_len gives the same last hidden state.

The math lives in pure functions (`represent_items`, `attention_mask`, `item_logits`,
`sasrec_loss`, `sasrec_scores`); the module only holds the parameters. The blocks are the shared
pre-LayerNorm `u2qt.nn.layers.AttentionBlock` (GELU feed-forward of width 4 d).
"""

from __future__ import annotations

import hashlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from u2qt.nn.layers import AttentionBlock

MODES = ("id", "semantic", "unified")
GIVEN = "given"  # the item table comes from the caller (see the module docstring)


def represent_items(items: jax.Array, mode: str, id_embedding: jax.Array | None = None,
                    code_embedding: jax.Array | None = None,
                    codes: jax.Array | None = None) -> jax.Array:
    """Item indices [...] -> representations [..., d].

    id_embedding: [I + 1, d]; code_embedding: [C, K, d] (table c for code position c);
    codes: int [I + 1, C], the semantic ID of every item.
    """
    out = 0.0
    if mode in ("id", "unified"):
        out = id_embedding[items]
    if mode in ("semantic", "unified"):
        item_codes = codes[items]                                     # [..., C]
        positions = jnp.arange(code_embedding.shape[0])
        out = out + code_embedding[positions, item_codes].sum(axis=-2)  # [..., C, d] -> [..., d]
    return out


def attention_mask(items: jax.Array) -> jax.Array:
    """[B, 1, T, T]: query t sees key s <= t, and only non-padding keys."""
    valid = items > 0
    return nn.combine_masks(nn.make_causal_mask(items), nn.make_attention_mask(valid, valid))


def item_logits(hidden: jax.Array, table: jax.Array) -> jax.Array:
    """hidden [..., d] x table [I + 1, d] -> [..., I + 1]; padding column 0 is -inf."""
    logits = split_by_item(hidden @ table.T)
    return logits.at[..., 0].set(-jnp.inf)


def split_by_item(logits: jax.Array) -> jax.Array:
    """Keeps [..., I + 1] logits split by item over the ambient mesh's "model" axis, as the item
    table is (``u2qt/train/sharding.py``); left alone, XLA materializes them whole on every device
    (at 1 M items and 512 positions, 2 GiB of temporaries per device whatever ``mesh.model``)."""
    mesh = jax.sharding.get_abstract_mesh()
    if (mesh.empty or "model" not in mesh.axis_names or mesh.shape["model"] == 1
            or logits.shape[-1] % mesh.shape["model"] or mesh.manual_axes):
        return logits
    return jax.lax.with_sharding_constraint(logits, jax.P(*(None,) * (logits.ndim - 1), "model"))


class FrozenCodes:
    """A read-only int32 code table [I + 1, C] that hashes by content, so a module holding it can
    still be a static argument of `jax.jit` (a numpy array would make the module unhashable)."""

    def __init__(self, codes):
        self.array = np.array(codes, dtype=np.int32)
        self.array.flags.writeable = False
        self._hash = hash((self.array.shape, hashlib.sha1(self.array.tobytes()).hexdigest()))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return (isinstance(other, FrozenCodes) and self._hash == other._hash
                and np.array_equal(self.array, other.array))

    def __repr__(self):
        return f"FrozenCodes(shape={self.array.shape})"


class SASRec(nn.Module):
    """Hidden states [B, T, d] of left-padded item sequences [B, T] (T <= max_len).

    `codes` (int [num_items + 1, C], needed by "semantic" and "unified") is a constant, not a
    parameter (kept as `FrozenCodes`, so the module stays hashable); `codebook_size` defaults to
    codes.max() + 1.
    """
    num_items: int
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    mode: str = "id"
    codes: Any = None
    codebook_size: int | None = None

    def __post_init__(self):
        if self.codes is not None and not isinstance(self.codes, FrozenCodes):
            object.__setattr__(self, "codes", FrozenCodes(self.codes))
        super().__post_init__()

    def setup(self):
        if self.mode not in MODES + (GIVEN,):
            raise ValueError(f"mode must be one of {MODES + (GIVEN,)}, got {self.mode!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        init = nn.initializers.normal(0.02)
        d = self.d_model
        self.id_embedding = (self.param("id_embedding", init, (self.num_items + 1, d))
                             if self.mode in ("id", "unified") else None)
        if self.mode in ("semantic", "unified"):
            codes = self.codes.array if self.codes is not None else None
            if codes is None or codes.ndim != 2 or codes.shape[0] != self.num_items + 1:
                shape = None if codes is None else codes.shape
                raise ValueError(f"mode {self.mode!r} needs codes of shape [num_items + 1 = "
                                 f"{self.num_items + 1}, C], got {shape}")
            size = self.codebook_size or int(codes.max()) + 1
            if codes.min() < 0 or codes.max() >= size:
                raise ValueError(f"codes must lie in [0, {size}), got {codes.min()}..{codes.max()}")
            self.code_table = jnp.asarray(codes, jnp.int32)
            self.code_embedding = self.param("code_embedding", init, (codes.shape[1], size, d))
        else:
            self.code_table, self.code_embedding = None, None
        self.position_embedding = self.param("position_embedding", init, (self.max_len, d))
        self.blocks = [AttentionBlock(d, self.num_heads, self.dropout)
                       for _ in range(self.num_layers)]
        self.input_dropout = nn.Dropout(self.dropout)
        self.final_norm = nn.LayerNorm()

    def represent(self, items: jax.Array) -> jax.Array:
        return represent_items(items, self.mode, self.id_embedding, self.code_embedding,
                               self.code_table)

    def item_table(self) -> jax.Array:
        """[I + 1, d]: the representation of every item (row 0: padding)."""
        return self.represent(jnp.arange(self.num_items + 1))

    def __call__(self, items: jax.Array, *, train: bool = False,
                 item_table: jax.Array | None = None) -> jax.Array:
        length = items.shape[-1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        if (self.mode == GIVEN) != (item_table is not None):
            raise ValueError(f"item_table= is needed by mode {GIVEN!r} and only by it (mode {self.mode!r})")
        valid = (items > 0)[..., None]
        x = item_table[items] if item_table is not None else self.represent(items)
        x = x * self.d_model ** 0.5
        x = (x + self.position_embedding[self.max_len - length:]) * valid
        x = self.input_dropout(x, deterministic=not train)
        mask = attention_mask(items)
        for block in self.blocks:
            x = block(x, mask=mask, deterministic=not train)
        return self.final_norm(x) * valid


def target_capacity(targets: np.ndarray, batch_size: int, sigmas: float = 6.0, multiple: int = 128) -> int:
    """How many positions with a target a training batch of `batch_size` rows of `targets` [N, T]
    needs room for: the mean count plus `sigmas` standard deviations of the batch sum, rounded up
    to `multiple`, at most batch_size · T. (Beauty, history 20: 1,792 of 5,120 positions.)"""
    per_row = (np.asarray(targets) > 0).sum(1)
    need = batch_size * per_row.mean() + sigmas * np.sqrt(batch_size) * per_row.std()
    return int(min(batch_size * targets.shape[1], multiple * np.ceil(need / multiple)))


def dropped_targets(targets: jax.Array, capacity: int | None) -> jax.Array:
    """How many positions with a target `sasrec_loss(..., capacity=capacity)` leaves out (0 when
    the batch fits; the loop logs it, so a too-small capacity shows)."""
    count = jnp.sum(targets > 0)
    return jnp.zeros_like(count) if capacity is None else jnp.maximum(count - capacity, 0)


def sasrec_loss(params, batch: dict[str, jax.Array], model: SASRec,
                dropout_rng: jax.Array | None = None, item_table: jax.Array | None = None,
                candidates: jax.Array | None = None, capacity: int | None = None) -> jax.Array:
    """Mean full-softmax cross-entropy of the next item over every position with a target.

    batch: "inputs" int [B, T] (left-padded) and "targets" int [B, T] (0 = no target there).
    Dropout is on when `dropout_rng` is given; `item_table` is for mode "given"; `candidates`
    (bool [I + 1]) limits the softmax to the items known at training time (cold-start evaluation:
    an item absent from training is not a negative either).
    `capacity` (static int): score only the positions with a target, gathered into `capacity`
    rows, instead of all B · T (most are left padding: the [positions, I + 1] logits are the
    step's cost). The same loss while the batch has <= capacity targets; beyond, the last ones
    in row order are left out (`dropped_targets` counts them; `target_capacity` sizes it).
    """
    train = dropout_rng is not None
    rngs = {"dropout": dropout_rng} if train else None
    hidden = model.apply({"params": params}, batch["inputs"], train=train, rngs=rngs, item_table=item_table)
    targets = batch["targets"]
    if capacity is not None:
        flat = targets.reshape(-1)
        has_target = flat > 0
        (where,) = jnp.nonzero(has_target, size=capacity, fill_value=0)
        hidden = hidden.reshape(-1, hidden.shape[-1])[where]
        targets = jnp.where(jnp.arange(capacity) < jnp.sum(has_target), flat[where], 0)
    table = item_table if item_table is not None else model.apply({"params": params}, method=SASRec.item_table)
    logits = item_logits(hidden, table)
    if candidates is not None:
        logits = jnp.where(candidates, logits, -jnp.inf)
    valid = targets > 0
    # -log softmax[target] = logsumexp(logits) - hidden · table[target]: the target's logit from a
    # gather of its row, so the backward pass is softmax only (no scatter into [positions, I + 1]).
    target_logit = jnp.sum(hidden * table[jnp.where(valid, targets, 1)], axis=-1)
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(valid.sum(), 1)


def sasrec_scores(params, history: jax.Array, model: SASRec, item_table: jax.Array | None = None) -> jax.Array:
    """Scores [B, I + 1] of every item as the next one after a left-padded history [B, T]."""
    hidden = model.apply({"params": params}, history, item_table=item_table)[:, -1]
    if item_table is None:
        item_table = model.apply({"params": params}, method=SASRec.item_table)
    return item_logits(hidden, item_table)
