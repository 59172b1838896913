"""u2qt.quant.codebooks: usage counts, k-means (++ seeding, empty clusters, residual levels), dead-code resets.

Everything is checked against plain numpy (brute-force greedy residual argmin, planted clusters)
on tiny random inputs of awkward sizes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rq_numpy import decode_numpy, greedy_numpy

from u2qt.quant import codebooks as cb


def _jit(fn, **kwargs):
    """Jitted once per static setting (eager dispatch of every op would dominate the run time),
    compiled at XLA backend optimization level 0: same arithmetic, quicker to compile."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


# ----------------------------------------------------------------------------- usage counts
def test_code_counts_with_and_without_mask():
    codes = np.array([[0, 2], [1, 2], [0, 0], [3, 1]], np.int32)
    mask = np.array([1, 0, 1, 1])
    want = np.zeros((2, 4))
    for row in codes:
        for level, c in enumerate(row):
            want[level, c] += 1
    np.testing.assert_array_equal(np.asarray(cb.code_counts(jnp.asarray(codes), 4)), want)
    want_masked = want.copy()
    for level, c in enumerate(codes[1]):
        want_masked[level, c] -= 1
    np.testing.assert_array_equal(np.asarray(cb.code_counts(jnp.asarray(codes), 4, jnp.asarray(mask))), want_masked)


# ----------------------------------------------------------------------------- k-means
_kmeans = _jit(cb.kmeans, static_argnames=("k", "iters"))


def _planted(seed, centers, per_cluster, noise):
    rng = np.random.default_rng(seed)
    return np.concatenate([c + noise * rng.standard_normal((per_cluster, len(c))) for c in centers]).astype(np.float32)


def test_kmeans_recovers_two_planted_clusters():
    centers = np.array([[10.0, 0.0, 1.0], [-10.0, 2.0, 0.0]])
    x = _planted(13, centers, 17, 0.5)
    for seed in range(5):
        c = np.asarray(_kmeans(jnp.asarray(x), k=2, key=jax.random.key(seed), iters=10))
        dist = np.linalg.norm(c[:, None] - centers[None], axis=-1)
        # Each centroid is near a distinct planted center, at that cluster's sample mean.
        assert sorted(dist.argmin(1)) == [0, 1], (seed, c)
        for j in range(2):
            np.testing.assert_allclose(c[j], x[17 * dist[j].argmin():17 * (dist[j].argmin() + 1)].mean(0), atol=1e-4)


def test_kmeans_recovers_well_separated_clusters_for_any_key():
    centers = np.array([[20.0, 0, 0], [-20.0, 0, 0], [0, 20.0, 0], [0, 0, 20.0]])
    x = jnp.asarray(_planted(14, centers, 12, 0.3))
    keys = jax.random.split(jax.random.key(0), 20)
    cents = np.asarray(_jit(jax.vmap(lambda key: cb.kmeans(x, 4, key, iters=15)))(keys))
    worst = np.linalg.norm(cents[:, :, None] - centers[None, None], axis=-1).min(1).max(1)  # per key
    assert np.all(worst < 1.0), f"{int(np.sum(worst >= 1.0))} of 20 keys miss a planted cluster"


def test_kmeans_never_leaves_a_centroid_empty():
    # Many exact duplicates: a start on two copies of one point makes a centroid lose all its
    # points; it must be moved to data, so the result is the three distinct points.
    a, b, c = [0.0, 0.0], [5.0, 0.0], [6.0, 1.0]
    x = np.array([a] * 10 + [b] * 5 + [c] * 5, np.float32)
    for seed in range(6):
        cents = np.asarray(_kmeans(jnp.asarray(x), k=3, key=jax.random.key(seed), iters=6))
        got = sorted(map(tuple, np.round(cents, 4)))
        assert got == sorted(map(tuple, [a, b, c])), (seed, cents)
    # Random data: every centroid ends with at least one point assigned.
    x = np.random.default_rng(15).standard_normal((40, 3)).astype(np.float32)
    cents = np.asarray(_kmeans(jnp.asarray(x), k=12, key=jax.random.key(1), iters=8))
    nearest = ((x[:, None] - cents[None]) ** 2).sum(-1).argmin(1)
    assert len(set(nearest.tolist())) == 12


def test_kmeans_needs_at_least_k_points():
    with pytest.raises(ValueError, match="k=5"):
        cb.kmeans(jnp.zeros((4, 3)), 5, jax.random.key(0))
    # Exactly k points: the centroids are the points themselves.
    x = np.random.default_rng(16).standard_normal((5, 3)).astype(np.float32)
    cents = np.asarray(_kmeans(jnp.asarray(x), k=5, key=jax.random.key(0), iters=3))
    np.testing.assert_allclose(sorted(map(tuple, cents)), sorted(map(tuple, x)), atol=1e-6)


def test_residual_kmeans_levels():
    # Coarse structure (scale 10) plus fine structure (scale 1): level 0 picks up the coarse
    # centers, level 1 the fine residual, and every level lowers the quantization error.
    rng = np.random.default_rng(17)
    coarse = 10 * rng.standard_normal((3, 4))
    fine = rng.standard_normal((3, 4))
    z = np.array([coarse[i] + fine[j] + 0.01 * rng.standard_normal(4) for i in range(3) for j in range(3)
                  for _ in range(4)], np.float32)
    books = _jit(cb.residual_kmeans, static_argnums=(1, 2), static_argnames="iters")(
        jnp.asarray(z), 2, 3, jax.random.key(0), iters=8)
    assert books.shape == (2, 3, 4) and books.dtype == jnp.float32
    books = np.asarray(books)
    assert np.all(np.isfinite(books))
    norms = np.linalg.norm(books, axis=-1).mean(-1)
    assert norms[0] > 3 * norms[1], norms
    err0 = float(np.sum(z ** 2, -1).mean())
    err1 = float(np.sum((z[:, None] - books[0][None]) ** 2, -1).min(1).mean())
    codes, _ = greedy_numpy(z, books)
    err2 = float(np.sum((z - decode_numpy(codes, books)) ** 2, -1).mean())
    assert err0 > 10 * err1 and err1 > 2 * err2, (err0, err1, err2)


# ----------------------------------------------------------------------------- dead codes, usage
_reset = _jit(cb.reset_dead_codes, static_argnames="threshold")


def test_reset_dead_codes_moves_only_dead_codes_onto_residuals():
    rng = np.random.default_rng(18)
    levels, k, d, b = 2, 6, 3, 5
    books = rng.standard_normal((levels, k, d)).astype(np.float32)
    usage = np.array([[5.0, 0.0, 2.0, 0.05, 1.0, 0.0], [0.0, 3.0, 3.0, 3.0, 3.0, 0.09]], np.float32)
    residuals = (100 + rng.standard_normal((b, levels, d))).astype(np.float32)
    residuals[:, 1] *= -1  # each level's residuals in their own region
    new, dead = _reset(jnp.asarray(books), jnp.asarray(usage), jnp.asarray(residuals),
                                    jax.random.key(0), threshold=0.1)
    new, dead = np.asarray(new), np.asarray(dead)
    np.testing.assert_array_equal(dead, usage < 0.1)
    np.testing.assert_array_equal(new[~dead], books[~dead])
    for level, j in zip(*np.nonzero(dead)):
        # A revived code sits (up to tiny noise) on a residual of its own level.
        gap = np.linalg.norm(residuals[:, level] - new[level, j], axis=-1).min()
        assert gap < 0.02, (level, j, gap)
    # No dead codes: nothing moves.
    same, none = _reset(jnp.asarray(books), jnp.ones((levels, k)), jnp.asarray(residuals),
                                     jax.random.key(1), threshold=0.1)
    np.testing.assert_array_equal(np.asarray(same), books)
    assert not np.asarray(none).any()
