"""Keeping codebooks alive: where they start (residual k-means on data) and how unused codes
come back (dead-code reset onto live residuals). The guard against codebook collapse of RQ-VAE /
DAS; the train loop applies it to every codebook stack of a tokenizer task.

    quantize_on(step)       the quantizer is off (z passes through) until the k-means step
    code_counts             usage histogram of a batch, [L, K]
    residual_kmeans         initial codebooks [L, K, D]: k-means on z, then on each level's residual
    reset_dead_codes        codes whose usage EMA is below a threshold move onto batch residuals
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from u2qt.kernels.codebook_assign import assign


def kmeans_step(qcfg) -> int:
    """The step at which codebooks are initialised by k-means (0 when they start at random)."""
    return qcfg.kmeans_at_step if qcfg.kmeans_init else 0


def quantize_on(step, qcfg):
    """Whether the quantizer is on at ``step``: before the k-means initialisation the encoders
    warm up unquantized, so the codebooks start where trained encodings are."""
    return step >= kmeans_step(qcfg)


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
