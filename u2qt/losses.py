"""The training objective, one equation per function: L = L_sem + α·L_cf + β·L_align.

- L_sem (semantic): each source's reconstruction from the quantized views + the quantization
  (codebook + commitment) losses of every codebook stack (``u2qt.quant.residual``).
- L_cf (collaborative): next-item prediction from the quantized user representation, with a
  full or sampled softmax over the item table.
- L_align (DAS, Kuaishou 2025): InfoNCE alignment terms
    u2i: the quantized user ↔ its behaviour representation (taken from another view),
    u2u: two views (crops) of the same user,
    co-occurrence: users who share items, weighted by how many they share.
All are pure functions of arrays; masks mark valid rows so padded users never count.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from u2qt.nn.layers import masked_mean


def _normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    # rsqrt(|x|² + eps²) keeps the gradient finite at x = 0 (|x| itself has a NaN gradient there).
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps * eps)


# ----------------------------------------------------------------------------- item softmax
def item_softmax_loss(query: jax.Array, item_table: jax.Array, targets: jax.Array, target_mask: jax.Array,
                      key: jax.Array | None = None, num_sampled: int = 0) -> jax.Array:
    """Cross-entropy of multi-target item prediction, per row.

    query [B, d]; item_table [I+1, d] (row 0 = padding, never a candidate); targets [B, T] item
    indices with target_mask [B, T]. The loss of a row is the mean over its targets of
    -log softmax(query · item)[target]. ``num_sampled=0``: full softmax over all items;
    ``num_sampled>0``: sampled softmax with that many uniform negatives shared by the batch
    (log-Q corrected), for catalogues too large for a full softmax.
    Returns [B]; rows with no target give 0.
    """
    num_rows = item_table.shape[0]
    pos_logits = jnp.einsum("bd,btd->bt", query, jnp.take(item_table, targets, axis=0))
    if num_sampled <= 0:
        logits = (query @ item_table.T).at[:, 0].set(-1e9)  # [B, I+1]
        log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    else:
        negatives = jax.random.randint(key, (num_sampled,), 1, num_rows)
        # log-Q correction for uniform sampling: subtract log(S / I).
        neg_logits = query @ jnp.take(item_table, negatives, axis=0).T - jnp.log(num_sampled / (num_rows - 1))
        # Each target competes with itself and the shared negatives.
        log_z = jnp.logaddexp(pos_logits, jax.nn.logsumexp(neg_logits, axis=-1, keepdims=True))
    nll = (log_z - pos_logits) * target_mask
    return jnp.sum(nll, -1) / jnp.maximum(jnp.sum(target_mask, -1), 1.0)


def l_cf(user: jax.Array, item_table: jax.Array, next_items: jax.Array, next_mask: jax.Array,
         row_mask: jax.Array, key: jax.Array | None = None, num_sampled: int = 0) -> jax.Array:
    """L_cf: predict the user's next items from the (quantized) user representation."""
    per_row = item_softmax_loss(user, item_table, next_items, next_mask, key, num_sampled)
    has_target = (jnp.sum(next_mask, -1) > 0) & row_mask.astype(bool)
    return masked_mean(per_row, has_target)


# ----------------------------------------------------------------------------- alignment
def info_nce(anchor: jax.Array, positive: jax.Array, mask: jax.Array, temperature: float) -> jax.Array:
    """Symmetric in-batch InfoNCE: row i of ``anchor`` should pick row i of ``positive``.

    Rows with mask=0 are neither anchors nor candidates.
    """
    a, p = _normalize(anchor), _normalize(positive)
    logits = (a @ p.T) / temperature
    valid = mask.astype(bool)
    logits = jnp.where(valid[None, :], logits, -1e9)
    diag = jnp.diagonal(logits)
    loss_ap = jax.nn.logsumexp(logits, axis=1) - diag
    loss_pa = jax.nn.logsumexp(jnp.where(valid[:, None], logits, -1e9), axis=0) - diag
    return masked_mean(0.5 * (loss_ap + loss_pa), valid)


def item_overlap(items: jax.Array, num_buckets: int) -> jax.Array:
    """How many items each pair of users shares: [B, B] from item indices [B, N] (0 = pad).

    Items are hashed into ``num_buckets`` so the cost does not grow with the catalogue; each
    user's bag is built by a scatter (no [B, N, buckets] one-hot).
    """
    rows = jnp.arange(items.shape[0])[:, None]
    buckets = jnp.where(items > 0, items % num_buckets, num_buckets)  # padding → a spare bucket, dropped
    bag = jnp.zeros((items.shape[0], num_buckets + 1), jnp.float32).at[rows, buckets].set(1.0)[:, :num_buckets]
    return bag @ bag.T


def co_occurrence_nce(user: jax.Array, overlap: jax.Array, mask: jax.Array, temperature: float) -> jax.Array:
    """Co-occurrence alignment: users who share items are positives, weighted by shared count.

    -Σ_j w_ij log softmax_{j≠i}(sim(u_i, u_j)/τ), w_ij = overlap_ij / Σ_j overlap_ij.
    Users who share nothing with anyone in the batch do not count.
    """
    u = _normalize(user)
    b = u.shape[0]
    valid = mask.astype(bool)
    eye = jnp.eye(b, dtype=bool)
    logits = jnp.where(eye | ~valid[None, :], -1e9, (u @ u.T) / temperature)
    log_p = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
    weights = jnp.where(eye | ~valid[None, :] | ~valid[:, None], 0.0, overlap)
    total = jnp.sum(weights, 1)
    per_row = -jnp.sum(weights * jnp.where(weights > 0, log_p, 0.0), 1) / jnp.maximum(total, 1e-6)
    return masked_mean(per_row, valid & (total > 0))


def l_align(terms: dict[str, jax.Array], weights: dict[str, float]) -> jax.Array:
    """L_align = Σ_t w_t · L_t over the enabled DAS alignment terms (u2i, u2u, co-occurrence)."""
    return sum(weights[name] * value for name, value in terms.items() if weights.get(name, 0.0) > 0)


# ----------------------------------------------------------------------------- reconstruction
def categorical_recon(logits_per_field: list[jax.Array], targets: jax.Array) -> jax.Array:
    """Per-row mean cross-entropy over categorical fields; target 0 (missing) does not count."""
    if not logits_per_field:
        return jnp.zeros(targets.shape[0])
    losses, present = [], []
    for f, logits in enumerate(logits_per_field):
        t = targets[:, f]
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, t[:, None], -1)[:, 0]
        losses.append(nll * (t > 0))
        present.append((t > 0).astype(jnp.float32))
    return sum(losses) / jnp.maximum(sum(present), 1.0)


def numeric_recon(pred: jax.Array, target: jax.Array, target_mask: jax.Array) -> jax.Array:
    """Per-row mean squared error over the numeric fields that are present."""
    if pred.shape[-1] == 0:
        return jnp.zeros(pred.shape[0])
    return jnp.sum((pred - target) ** 2 * target_mask, -1) / jnp.maximum(jnp.sum(target_mask, -1), 1.0)


def cosine_recon(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Per-row 1 - cos(pred, target)."""
    return 1.0 - jnp.sum(_normalize(pred) * _normalize(target), -1)


def l_sem(recon_terms: dict[str, jax.Array], quant_losses: dict[str, jax.Array]) -> jax.Array:
    """L_sem = Σ_s reconstruction_s + Σ_views quantization loss (codebook + β·commitment)."""
    return sum(recon_terms.values()) + sum(quant_losses.values())


def total_loss(sem: jax.Array, cf: jax.Array, align: jax.Array, *, alpha: float, beta: float) -> jax.Array:
    """L = L_sem + α·L_cf + β·L_align (DAS)."""
    return sem + alpha * cf + beta * align
