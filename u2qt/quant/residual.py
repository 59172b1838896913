"""Residual quantization: the math, as pure functions.

One stack of codebooks ``[L, K, D]`` quantizes a vector greedily, level by level, each level
coding what the previous ones left (the residual). U²QT's multi-view quantizer is several such
stacks (one shared, one per source, see ``u2qt/models/user_tokenizer.py``); the item tokenizers use one.
Keeping codebooks alive (k-means init, dead-code resets) is in ``codebooks.py``.

Equations (per level l, residual input r_l, chosen code e_l = C_l[argmin ||r_l - C_l||²]):
    r_0 = z,  r_{l+1} = r_l - e_l,  ẑ = Σ_l e_l
    codebook loss   = Σ_l ||sg(r_l) - e_l||²
    commitment loss = β · Σ_l ||r_l - sg(e_l)||²
    z_q = z + sg(ẑ - z)                    (straight-through), or the rotation trick.
Optional guard against codebook collapse (``usage_entropy``, weight ``entropy_weight``): with the
soft assignment p_b,l = softmax_k(-||r_l,b - C_l,k||² / (τ · sg(mean_k ||r_l,b - C_l,k||²))),
    L_H = Σ_l [ mean_b H(p_b,l) − H(mean_b p_b,l) ] / L
is low when each row is confidently assigned and the batch spreads over all codes.
Nearest-code assignment goes through ``u2qt.kernels.codebook_assign`` on stop-gradient inputs; the
gradient estimators and losses stay here in plain JAX.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from u2qt.kernels.codebook_assign import assign_residual
from u2qt.nn.layers import masked_mean

sg = jax.lax.stop_gradient


class QuantizeOutput(NamedTuple):
    z_q: jax.Array  # [B, D] quantized vector carrying the straight-through gradient to z
    codes: jax.Array  # [B, L] int32
    residuals: jax.Array  # [B, L, D] the input of each level (for k-means and dead-code reset)
    loss: jax.Array  # scalar: (codebook + β·commitment) summed over levels / L, averaged over valid rows
    recon_error: jax.Array  # scalar: mean ||z - ẑ||² over valid rows


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
    loss = masked_mean(codebook_loss + beta * commitment, mask) / num_levels
    if entropy_weight:
        loss = loss + entropy_weight * usage_entropy(residuals, codebooks, entropy_temperature, mask)
    recon = masked_mean(jnp.sum((sg(z) - sg(z_hat)) ** 2, -1), mask)
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
