"""Plain-jnp nearest-code assignment: the definition every other implementation must match.

Also the export/serving path (no custom calls). It materializes the N×K score matrix.

All implementations share the same arithmetic so that they agree bit-for-bit up to the order of
the D-reduction inside the matmul:

        dot_nk   = x_n · c_k                       (input dtype, f32 accumulation)
        score_nk = bias_k + scale_k * dot_nk       (f32; the part of the distance that depends on k)
        index_n  = lowest k with score_nk == min_k score_nk
        distance = finalize(min score, x_n)

with, for metric "l2" (squared Euclidean):   bias = ||c||², scale = -2,  distance = max(score + ||x||², 0)
and for metric "cosine" (1 - cos(x, c)):     bias = 0,  scale = -1/||c||, distance = 1 + score/||x||.
The per-row term (||x||² or 1/||x||) is added after the argmin, so it cannot break ties differently.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

METRICS = ("l2", "cosine")
# Norms below this are treated as this (cosine of a zero vector is taken as 0, distance 1).
NORM_EPS = 1e-12


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def code_terms(codebook: jax.Array, metric: str) -> tuple[jax.Array, jax.Array]:
    """Per-code (bias, scale), float32 [K] each: score = bias + scale * (x · c)."""
    check_metric(metric)
    sq_norm = jnp.sum(jnp.square(codebook.astype(jnp.float32)), axis=-1)
    if metric == "l2":
        return sq_norm, jnp.full_like(sq_norm, -2.0)
    return jnp.zeros_like(sq_norm), -jax.lax.rsqrt(jnp.maximum(sq_norm, NORM_EPS * NORM_EPS))


def pad_rows(a: jax.Array, rows: int, value=0) -> jax.Array:
    """Pads the leading axis of ``a`` up to ``rows`` with ``value``."""
    if a.shape[0] == rows:
        return a
    return jnp.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1), constant_values=value)


def padded_code_terms(codebook: jax.Array, metric: str, k_padded: int, d_padded: int | None = None):
    """Codebook [k_padded, d_padded] and (bias, scale) [k_padded] with padding codes that never win.

    Padded codes are zero vectors with bias +inf and scale 0, so their score is +inf; padded feature
    columns are zero, which leaves every dot product unchanged.
    """
    bias, scale = code_terms(codebook, metric)
    codes = pad_rows(codebook, k_padded)
    if d_padded is not None and d_padded != codes.shape[-1]:
        codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, d_padded - codes.shape[-1])])
    return codes, pad_rows(bias, k_padded, jnp.inf), pad_rows(scale, k_padded, 0.0)


def scores_from_dots(dots: jax.Array, bias: jax.Array, scale: jax.Array) -> jax.Array:
    """score = bias + scale * dot, broadcasting [K] terms against [..., K] dots."""
    return bias + scale * dots


def finalize_distance(min_score: jax.Array, x: jax.Array, metric: str) -> jax.Array:
    """Turns the winning score [N] into the metric's distance, adding the per-row term."""
    sq_norm = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1)
    if metric == "l2":
        return jnp.maximum(min_score + sq_norm, 0.0)
    return 1.0 + min_score * jax.lax.rsqrt(jnp.maximum(sq_norm, NORM_EPS * NORM_EPS))


def dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """a [M,D] · b [K,D]ᵀ in the inputs' dtype with float32 accumulation."""
    dtype = jnp.promote_types(a.dtype, b.dtype)
    return jax.lax.dot_general(
            a.astype(dtype), b.astype(dtype), (((1,), (1,)), ((), ())),
            preferred_element_type=jnp.float32)


def argmin_lowest(scores: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(min, lowest index attaining it) along the last axis; int32 indices.

    XLA's argmin breaks ties towards the lower index on every backend.
    """
    index = jnp.argmin(scores, axis=-1).astype(jnp.int32)
    return jnp.take_along_axis(scores, index[..., None], axis=-1)[..., 0], index


def assign(x: jax.Array, codebook: jax.Array, *, metric: str = "l2") -> tuple[jax.Array, jax.Array]:
    """Nearest code for each row of x [N,D] in codebook [K,D] -> (index int32 [N], distance f32 [N])."""
    bias, scale = code_terms(codebook, metric)
    min_score, index = argmin_lowest(scores_from_dots(dot_nt(x, codebook), bias, scale))
    return index, finalize_distance(min_score, x, metric)


def residual_step(residual: jax.Array, codebook: jax.Array, index: jax.Array) -> jax.Array:
    """r_{l+1} = r_l - C_l[i_l], kept in float32."""
    return residual - jnp.take(codebook, index, axis=0).astype(jnp.float32)


def assign_residual(x: jax.Array, codebooks: jax.Array, *, assign_fn=None) -> tuple[jax.Array, jax.Array]:
    """Greedy residual assignment over codebooks [L,K,D] -> (indices int32 [N,L], distances f32 [N,L]).

    r_0 = x; i_l = argmin_k ||r_l - C_l[k]||²; r_{l+1} = r_l - C_l[i_l]. The residual is carried in
    float32 and cast back to the codebook dtype for the matmul (so bf16 stays a bf16 matmul).
    ``assign_fn(r, codebook) -> (index, distance)`` is the single-level assignment (default: this
    module's l2 ``assign``).
    """
    if assign_fn is None:
        assign_fn = lambda r, c: assign(r, c, metric="l2")
    residual = x.astype(jnp.float32)
    indices, distances = [], []
    for level in range(codebooks.shape[0]):
        index, distance = assign_fn(residual.astype(codebooks.dtype), codebooks[level])
        indices.append(index)
        distances.append(distance)
        residual = residual_step(residual, codebooks[level], index)
    return jnp.stack(indices, axis=1), jnp.stack(distances, axis=1)
