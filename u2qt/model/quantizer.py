"""Residual quantization: the math, as pure functions.

One stack of codebooks ``[L, K, D]`` quantizes a vector greedily, level by level, each level
coding what the previous ones left (the residual). U²QT's multi-view quantizer is several such
stacks (one shared, one per source, see ``u2qt/model/u2qt.py``); the DAS item tokenizer uses one.

Equations (per level l, residual input r_l, chosen code e_l = C_l[argmin ||r_l - C_l||²]):
    r_0 = z,  r_{l+1} = r_l - e_l,  ẑ = Σ_l e_l
    codebook loss   = Σ_l ||sg(r_l) - e_l||²
    commitment loss = β · Σ_l ||r_l - sg(e_l)||²
    z_q = z + sg(ẑ - z)                    (straight-through), or the rotation trick.
Optional guard against codebook collapse (``usage_entropy``, weight ``entropy_weight``): with the
soft assignment p_b,l = softmax_k(-||r_l,b - C_l,k||² / (τ · sg(mean_k ||r_l,b - C_l,k||²))),
    L_H = Σ_l [ mean_b H(p_b,l) − H(mean_b p_b,l) ] / L
is low when each row is confidently assigned and the batch spreads over all codes.
Nearest-code assignment goes through ``kernels.codebook_assign`` on stop-gradient inputs; the
gradient estimators and losses stay here in plain JAX.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.codebook_assign import assign, assign_residual

sg = jax.lax.stop_gradient


class QuantizeOutput(NamedTuple):
    z_q: jax.Array  # [B, D] quantized vector carrying the straight-through gradient to z
    codes: jax.Array  # [B, L] int32
    residuals: jax.Array  # [B, L, D] the input of each level (for k-means and dead-code reset)
    loss: jax.Array  # scalar: (codebook + β·commitment) summed over levels / L, averaged over valid rows
    recon_error: jax.Array  # scalar: mean ||z - ẑ||² over valid rows


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def rotation_estimator(z: jax.Array, z_hat: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Fifty et al. 2024: forward gives ẑ; backward rotates the gradient with z → ẑ's rotation.

    z_q = λ · (z - 2 r (rᵀz) + 2 q (eᵀz)), e = z/|z|, q = ẑ/|ẑ|, r = (e+q)/|e+q|, λ = |ẑ|/|z|,
    with e, q, r, λ held constant under differentiation.
    """
    z_norm = jnp.linalg.norm(z, axis=-1, keepdims=True)
    zh_norm = jnp.linalg.norm(z_hat, axis=-1, keepdims=True)
    e = sg(z / (z_norm + eps))
    q = sg(z_hat / (zh_norm + eps))
    r = e + q
    r = sg(r / (jnp.linalg.norm(r, axis=-1, keepdims=True) + eps))
    lam = sg(zh_norm / (z_norm + eps))
    rotated = lam * (z - 2.0 * r * jnp.sum(r * z, -1, keepdims=True) + 2.0 * q * jnp.sum(e * z, -1, keepdims=True))
    # Exact forward value even where |z| or |ẑ| is within eps of zero; the gradient is the rotation's.
    return rotated + sg(z_hat - rotated)


def residual_quantize(
    z: jax.Array,
    codebooks: jax.Array,
    *,
    beta: float,
    mask: jax.Array | None = None,
    implementation: str | None = None,
    rotation_trick: bool = False,
    entropy_weight: float = 0.0,
    entropy_temperature: float = 0.1,
) -> QuantizeOutput:
    """Quantizes z [B, D] with the stack codebooks [L, K, D]; see the module docstring."""
    num_levels = codebooks.shape[0]
    codes, _ = assign_residual(sg(z), sg(codebooks), implementation=implementation)
    codes = codes.astype(jnp.int32)
    # e_l = C_l[i_l]: gathered with gradient to the codebooks.
    chosen = jax.vmap(lambda cb, idx: jnp.take(cb, idx, axis=0), in_axes=(0, 1), out_axes=1)(codebooks, codes)
    # r_l = z - Σ_{j<l} sg(e_j): gradient reaches z through every level's commitment term.
    before = jnp.cumsum(sg(chosen), axis=1) - sg(chosen)
    residuals = z[:, None, :] - before
    codebook_loss = jnp.sum((sg(residuals) - chosen) ** 2, axis=(1, 2))
    commitment = jnp.sum((residuals - sg(chosen)) ** 2, axis=(1, 2))
    z_hat = jnp.sum(chosen, axis=1)
    if rotation_trick:
        # Gradient to z by rotation; the codebooks still learn through the codebook loss.
        z_q = rotation_estimator(z, sg(z_hat))
    else:
        z_q = z + sg(z_hat - z)
    loss = _masked_mean(codebook_loss + beta * commitment, mask) / num_levels
    if entropy_weight:
        loss = loss + entropy_weight * usage_entropy(residuals, codebooks, entropy_temperature, mask)
    recon = _masked_mean(jnp.sum((sg(z) - sg(z_hat)) ** 2, -1), mask)
    return QuantizeOutput(z_q=z_q, codes=codes, residuals=sg(residuals), loss=loss, recon_error=recon)


def _entropy(p: jax.Array) -> jax.Array:
    return -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-12)), axis=-1)


def usage_entropy(residuals: jax.Array, codebooks: jax.Array, temperature: float,
                  mask: jax.Array | None = None) -> jax.Array:
    """L_H of the module docstring: residuals [B, L, D] (each level's input, with gradient),
    codebooks [L, K, D]. Distances are scaled by their row mean, so τ is free of the data's scale."""
    dist = jnp.sum((residuals[:, :, None, :] - codebooks[None]) ** 2, -1)  # [B, L, K]
    logits = -dist / (temperature * sg(jnp.mean(dist, -1, keepdims=True)) + 1e-12)
    p = jax.nn.softmax(logits, -1)
    w = jnp.ones(p.shape[:1], p.dtype) if mask is None else mask.astype(p.dtype)
    w = w / jnp.maximum(jnp.sum(w), 1.0)
    per_row = jnp.sum(w[:, None] * _entropy(p), 0)  # [L]
    batch_usage = jnp.einsum("b,blk->lk", w, p)  # [L, K]
    return jnp.mean(per_row - _entropy(batch_usage))


def implementation(qcfg) -> str | None:
    """The kernel a config's ``quantizer.implementation`` names (None = pick per backend)."""
    return None if qcfg.implementation == "auto" else qcfg.implementation


def quantize(z: jax.Array, codebooks: jax.Array, qcfg, mask: jax.Array | None = None) -> QuantizeOutput:
    """``residual_quantize`` with the settings of a config's ``quantizer`` section (every model
    that quantizes goes through here, so the config switches mean the same everywhere)."""
    return residual_quantize(z, codebooks, beta=qcfg.commitment, mask=mask,
                             implementation=implementation(qcfg),
                             rotation_trick=qcfg.rotation_trick,
                             entropy_weight=qcfg.entropy_weight,
                             entropy_temperature=qcfg.entropy_temperature)


def decode_codes(codes: jax.Array, codebooks: jax.Array) -> jax.Array:
    """ẑ = Σ_l C_l[codes_l]; codes [B, L] → [B, D]. The serving path from tokens to vectors."""
    return sum(jnp.take(codebooks[l], codes[:, l], axis=0) for l in range(codebooks.shape[0]))


def code_counts(codes: jax.Array, num_codes: int, mask: jax.Array | None = None) -> jax.Array:
    """Usage histogram [L, K] of a batch of codes [B, L] (rows with mask=0 are not counted)."""
    onehot = jax.nn.one_hot(codes, num_codes, dtype=jnp.float32)  # [B, L, K]
    if mask is not None:
        onehot = onehot * mask.astype(jnp.float32)[:, None, None]
    return jnp.sum(onehot, axis=0)


def kmeans_plus_plus(x: jax.Array, k: int, key: jax.Array) -> jax.Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centroid is a point drawn with
    probability ∝ its squared distance to the nearest centroid so far. O(N·K·D)."""
    n = x.shape[0]
    first = x[jax.random.randint(key, (), 0, n)]
    nearest = jnp.sum((x - first) ** 2, -1)
    centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)

    def add(i, carry):
        centroids, nearest = carry
        logits = jnp.where(nearest > 0, jnp.log(jnp.maximum(nearest, 1e-30)), -jnp.inf)
        # All points already chosen (duplicates): fall back to a uniform draw.
        logits = jnp.where(jnp.all(nearest <= 0), 0.0, logits)
        pick = x[jax.random.categorical(jax.random.fold_in(key, i), logits)]
        return centroids.at[i].set(pick), jnp.minimum(nearest, jnp.sum((x - pick) ** 2, -1))

    centroids, _ = jax.lax.fori_loop(1, k, add, (centroids, nearest))
    return centroids


def kmeans(x: jax.Array, k: int, key: jax.Array, *, iters: int = 20, implementation: str | None = None) -> jax.Array:
    """Lloyd's k-means in JAX with k-means++ seeding: centroids [k, D] from points x [N, D].

    A centroid that loses all its points is moved to the point currently worst served, so no
    centroid stays empty. N ≥ k is required.
    """
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}; use a larger init batch")
    x = x.astype(jnp.float32)
    init = kmeans_plus_plus(x, k, key)

    def step(centroids, _):
        idx, dist = assign(x, centroids, implementation=implementation)
        onehot = jax.nn.one_hot(idx, k, dtype=jnp.float32)
        counts = onehot.sum(0)
        sums = onehot.T @ x
        means = sums / jnp.maximum(counts, 1.0)[:, None]
        # Empty clusters take the worst-served points, in order of distance.
        empty = counts == 0
        worst = jnp.argsort(-dist)[:k]
        fill_rank = jnp.cumsum(empty) - 1
        refill = x[worst[jnp.clip(fill_rank, 0, k - 1)]]
        return jnp.where(empty[:, None], refill, means), None

    centroids, _ = jax.lax.scan(step, init, None, length=iters)
    return centroids


def residual_kmeans(z: jax.Array, num_levels: int, num_codes: int, key: jax.Array, *, iters: int = 20,
                    implementation: str | None = None) -> jax.Array:
    """Initial codebooks [L, K, D]: k-means on z, then on what each level leaves (RQ-VAE style)."""
    books = []
    residual = z.astype(jnp.float32)
    for level, level_key in enumerate(jax.random.split(key, num_levels)):
        book = kmeans(residual, num_codes, level_key, iters=iters, implementation=implementation)
        idx, _ = assign(residual, book, implementation=implementation)
        residual = residual - book[idx]
        books.append(book)
    return jnp.stack(books)


def reset_dead_codes(codebooks: jax.Array, usage: jax.Array, residuals: jax.Array, key: jax.Array, *,
                     threshold: float) -> tuple[jax.Array, jax.Array]:
    """Moves every code whose usage is below ``threshold`` onto a random residual of the batch.

    codebooks [L, K, D]; usage [L, K] (an exponential moving average of counts per step);
    residuals [B, L, D] the input of each level. Returns (new codebooks, dead mask [L, K]).
    A revived code starts where data actually is, so it can win assignments again (the guard
    against codebook collapse of RQ-VAE / DAS).
    """
    num_levels, num_codes, dim = codebooks.shape
    batch = residuals.shape[0]
    dead = usage < threshold
    picks = jax.random.randint(key, (num_levels, num_codes), 0, batch)
    noise = 1e-3 * jax.random.normal(jax.random.fold_in(key, 1), codebooks.shape)
    donors = jnp.take_along_axis(jnp.swapaxes(residuals, 0, 1), picks[..., None], axis=1)  # [L, K, D]
    return jnp.where(dead[..., None], donors + noise, codebooks), dead


def usage_stats(counts: jax.Array) -> dict[str, jax.Array]:
    """Per-level usage fraction and perplexity (exp entropy) from counts [L, K]."""
    total = jnp.maximum(counts.sum(-1, keepdims=True), 1.0)
    p = counts / total
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0), -1)
    return {"usage": jnp.mean(counts > 0, -1), "perplexity": jnp.exp(entropy)}
