"""u2qt.quant.residual: residual quantization math, gradient estimators, decoding, the usage-entropy guard.

Everything is checked against plain numpy (brute-force greedy residual argmin, the loss formulas
of the module docstring) on tiny random inputs of awkward sizes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rq_numpy import decode_numpy, greedy_numpy

from u2qt.quant import residual as rq


def _jit(fn, **kwargs):
    """Jitted once per static setting (eager dispatch of every op would dominate the run time),
    compiled at XLA backend optimization level 0: same arithmetic, quicker to compile."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


# Plain jit: it is differentiated through, and only a top-level jit takes compiler options.
_quantize = jax.jit(rq.residual_quantize, static_argnames=("beta", "implementation", "rotation_trick"))


def _inputs(seed, b=7, levels=3, k=5, d=6):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((b, d)).astype(np.float32)
    books = rng.standard_normal((levels, k, d)).astype(np.float32)
    return z, books


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("implementation,seed,b,levels,k,d", [
    (None, 0, 7, 3, 5, 6), (None, 1, 13, 2, 9, 3), ("chunked", 2, 1, 4, 3, 5), ("chunked", 0, 7, 3, 5, 6)])
def test_codes_are_greedy_residual_argmin(implementation, seed, b, levels, k, d):
    z, books = _inputs(seed, b, levels, k, d)
    out = _quantize(jnp.asarray(z), jnp.asarray(books), beta=0.25, implementation=implementation)
    want_codes, want_residuals = greedy_numpy(z, books)
    assert out.codes.dtype == jnp.int32 and out.codes.shape == (b, levels)
    np.testing.assert_array_equal(np.asarray(out.codes), want_codes)
    np.testing.assert_allclose(np.asarray(out.residuals), want_residuals, atol=1e-5)


def test_codes_exact_on_integer_inputs_with_ties():
    # Integer values: every distance is exact, duplicated codes force ties (lowest index wins).
    rng = np.random.default_rng(3)
    z = rng.integers(-3, 4, (11, 4)).astype(np.float32)
    books = rng.integers(-2, 3, (3, 6, 4)).astype(np.float32)
    books[:, 3] = books[:, 1]  # an exact duplicate: never chosen
    out = _quantize(jnp.asarray(z), jnp.asarray(books), beta=0.25)
    want, _ = greedy_numpy(z, books)
    np.testing.assert_array_equal(np.asarray(out.codes), want)
    assert not np.any(np.asarray(out.codes) == 3)


def test_forward_value_is_sum_of_chosen_codes_and_losses_match_formula():
    z, books = _inputs(4)
    beta = 0.3
    out = _quantize(jnp.asarray(z), jnp.asarray(books), beta=beta)
    codes, residuals = greedy_numpy(z, books)
    z_hat = decode_numpy(codes, books.astype(np.float64))
    np.testing.assert_allclose(np.asarray(out.z_q), z_hat, atol=1e-5)
    # In the forward pass codebook and commitment terms have the same value Σ_l ||r_l - e_l||².
    chosen = np.stack([books[level][codes[:, level]] for level in range(books.shape[0])], 1)
    per_row = ((residuals - chosen) ** 2).sum((1, 2))
    np.testing.assert_allclose(float(out.loss), (1 + beta) * per_row.mean() / books.shape[0], rtol=1e-5)
    np.testing.assert_allclose(float(out.recon_error), ((z - z_hat) ** 2).sum(-1).mean(), rtol=1e-5)


# ----------------------------------------------------------------------------- gradients
def test_straight_through_gradient_is_identity():
    z, books = _inputs(5)
    w = np.random.default_rng(50).standard_normal(z.shape).astype(np.float32)

    def f(z):
        return jnp.sum(_quantize(z, jnp.asarray(books), beta=0.25).z_q * w)

    np.testing.assert_allclose(np.asarray(jax.grad(f)(jnp.asarray(z))), w, rtol=1e-6)


def test_codebook_loss_gradient_reaches_only_chosen_codes():
    z, books = _inputs(6, b=4, levels=3, k=8, d=5)  # 4 rows cannot use all 8 codes of a level
    beta = 0.25
    grad = jax.grad(lambda c: _quantize(jnp.asarray(z), c, beta=beta).loss)(jnp.asarray(books))
    grad = np.asarray(grad)
    codes, residuals = greedy_numpy(z, books)
    levels, k, _ = books.shape
    # d/dC_l[j] of mean_b Σ_l ||sg(r_l) - e_l||² / L = Σ_{b: code=j} -2 (r_bl - C_l[j]) / (B·L).
    want = np.zeros_like(grad)
    for b in range(z.shape[0]):
        for level in range(levels):
            j = codes[b, level]
            want[level, j] += -2 * (residuals[b, level] - books[level, j]) / (z.shape[0] * levels)
    np.testing.assert_allclose(grad, want, atol=1e-5)
    used = np.zeros((levels, k), bool)
    for level in range(levels):
        used[level, codes[:, level]] = True
    assert (~used).any()
    assert np.all(grad[~used] == 0.0)
    assert np.all(np.abs(grad[used]).sum(-1) > 0)


def test_commitment_gradient_reaches_z():
    z, books = _inputs(7)
    codes, residuals = greedy_numpy(z, books)
    chosen = np.stack([books[level][codes[:, level]] for level in range(books.shape[0])], 1)
    b, levels = z.shape[0], books.shape[0]

    def loss_grad(beta):
        return np.asarray(jax.grad(lambda z: _quantize(z, jnp.asarray(books), beta=beta).loss)(
            jnp.asarray(z)))

    # β·Σ_l ||r_l - sg(e_l)||² with r_l = z - Σ_{j<l} sg(e_j): d/dz = β·Σ_l 2(r_l - e_l) / (B·L).
    want = 0.5 * 2 * (residuals - chosen).sum(1) / (b * levels)
    np.testing.assert_allclose(loss_grad(0.5), want, atol=1e-5)
    assert np.abs(want).sum() > 0
    # Without commitment the codebook term alone sends nothing to z (its residuals are stop-gradient).
    np.testing.assert_array_equal(loss_grad(0.0), 0.0)


def test_rotation_trick_same_forward_different_gradient():
    z, books = _inputs(8)
    w = np.random.default_rng(80).standard_normal(z.shape).astype(np.float32)

    @_jit
    def both(z):
        def run(z, rotation):
            return rq.residual_quantize(z, jnp.asarray(books), beta=0.25, rotation_trick=rotation)

        grad = lambda rotation: jax.grad(lambda z: jnp.sum(run(z, rotation).z_q * w))(z)
        return run(z, False), run(z, True), grad(False), grad(True)

    st, rot, g_st, g_rot = jax.device_get(both(jnp.asarray(z)))
    np.testing.assert_allclose(rot.z_q, st.z_q, atol=1e-4)
    np.testing.assert_array_equal(rot.codes, st.codes)
    np.testing.assert_allclose(rot.loss, st.loss, rtol=1e-6)
    np.testing.assert_allclose(g_st, w, rtol=1e-6)
    assert np.all(np.isfinite(g_rot))
    assert np.abs(g_rot - g_st).max() > 1e-2


def test_rotation_trick_forward_is_z_hat_for_tiny_and_zero_inputs():
    _, books = _inputs(19, levels=2, k=4, d=3)
    z = np.array([[0.0, 0.0, 0.0], [1e-7, 0.0, 0.0], [0.0, 3e-6, 0.0]], np.float32)
    st = _quantize(jnp.asarray(z), jnp.asarray(books), beta=0.25)
    rot = _quantize(jnp.asarray(z), jnp.asarray(books), beta=0.25, rotation_trick=True)
    np.testing.assert_allclose(np.asarray(rot.z_q), np.asarray(st.z_q), atol=1e-4)


def test_rotation_estimator_is_a_scaled_rotation_of_z_onto_z_hat():
    # Jacobian J = λ·R with R a rotation (JᵀJ = λ²·I, λ = |ẑ|/|z|) and J z = ẑ.
    rng = np.random.default_rng(9)
    z, z_hat = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    jac = np.asarray(_jit(jax.jacobian(lambda v: rq.rotation_estimator(v, jnp.asarray(z_hat))))(jnp.asarray(z)))
    lam = np.linalg.norm(z_hat) / np.linalg.norm(z)
    np.testing.assert_allclose(jac.T @ jac, lam ** 2 * np.eye(5), atol=1e-4)
    np.testing.assert_allclose(jac @ z, z_hat, atol=1e-4)
    assert np.linalg.det(jac / lam) > 0  # a rotation, not a reflection


def test_mask_excludes_rows_from_loss():
    z, books = _inputs(10, b=6)
    mask = np.array([1, 0, 1, 1, 0, 1], np.float32)
    keep = mask > 0

    @_jit
    def loss_and_grad(z, mask):
        def loss(z):
            out = rq.residual_quantize(z, jnp.asarray(books), beta=0.25, mask=mask)
            return out.loss, out.recon_error

        return jax.value_and_grad(loss, has_aux=True)(z)

    (loss, recon), grad = jax.device_get(loss_and_grad(jnp.asarray(z), jnp.asarray(mask)))
    (sub_loss, sub_recon), _ = jax.device_get(loss_and_grad(jnp.asarray(z[keep]), jnp.ones(int(keep.sum()))))
    np.testing.assert_allclose(loss, sub_loss, rtol=1e-6)
    np.testing.assert_allclose(recon, sub_recon, rtol=1e-6)
    # Masked rows may hold anything without changing the loss, and get no gradient from it.
    assert np.all(grad[~keep] == 0) and np.abs(grad[keep]).sum() > 0
    wild = z.copy()
    wild[~keep] = 1e3
    (wild_loss, _), _ = jax.device_get(loss_and_grad(jnp.asarray(wild), jnp.asarray(mask)))
    np.testing.assert_allclose(wild_loss, loss, rtol=1e-6)
    # All rows masked: zero loss, not NaN.
    (none_loss, none_recon), _ = jax.device_get(loss_and_grad(jnp.asarray(z), jnp.zeros(6)))
    assert none_loss == 0.0 and none_recon == 0.0
    # No mask means every row counts.
    full = _quantize(jnp.asarray(z), jnp.asarray(books), beta=0.25)
    (ones_loss, _), _ = jax.device_get(loss_and_grad(jnp.asarray(z), jnp.ones(6)))
    np.testing.assert_allclose(float(full.loss), ones_loss, rtol=1e-6)
    assert abs(float(full.loss) - loss) > 1e-4


# ----------------------------------------------------------------------------- codes ↔ vectors
def test_decode_codes_inverts_codes():
    # Codebooks of each level in their own coordinates: greedy assignment recovers any code tuple.
    rng = np.random.default_rng(11)
    levels, k, sub = 3, 5, 2
    books = np.zeros((levels, k, levels * sub), np.float32)
    for level in range(levels):
        books[level, :, level * sub:(level + 1) * sub] = rng.standard_normal((k, sub))
    codes = rng.integers(0, k, (9, levels)).astype(np.int32)
    vectors = rq.decode_codes(jnp.asarray(codes), jnp.asarray(books))
    np.testing.assert_allclose(np.asarray(vectors), decode_numpy(codes, books), atol=1e-6)
    out = _quantize(vectors, jnp.asarray(books), beta=0.25)
    np.testing.assert_array_equal(np.asarray(out.codes), codes)
    assert float(out.recon_error) < 1e-10


def test_decode_codes_reproduces_quantized_vector():
    z, books = _inputs(12)
    out = _quantize(jnp.asarray(z), jnp.asarray(books), beta=0.25)
    np.testing.assert_allclose(np.asarray(rq.decode_codes(out.codes, jnp.asarray(books))), np.asarray(out.z_q),
                               atol=1e-5)


# ----------------------------------------------------------------------------- usage entropy
def _usage_entropy_numpy(residuals, books, tau):
    dist = ((residuals[:, :, None, :] - books[None]) ** 2).sum(-1)
    logits = -dist / (tau * dist.mean(-1, keepdims=True))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    h = lambda q: -(q * np.log(q)).sum(-1)
    return float(np.mean(h(p).mean(0) - h(p.mean(0))))


def test_usage_entropy_matches_numpy_and_prefers_spread_codes():
    z, books = _inputs(3, b=9, levels=2, k=4, d=5)
    residuals = np.stack([z, z - books[0][0]], 1)
    got = float(rq.usage_entropy(jnp.asarray(residuals), jnp.asarray(books), 0.3))
    assert got == pytest.approx(_usage_entropy_numpy(residuals.astype(np.float64), books.astype(np.float64), 0.3), rel=1e-4)
    # every row at the same code vs rows spread evenly over the codes (one level, 4 codes)
    book = np.eye(4, dtype=np.float32)[None] * 3.0
    collapsed = np.repeat(book[:, :1], 8, 1).transpose(1, 0, 2)
    spread = np.tile(book[0], (2, 1))[:, None]
    assert float(rq.usage_entropy(jnp.asarray(spread), jnp.asarray(book), 0.1)) < \
        float(rq.usage_entropy(jnp.asarray(collapsed), jnp.asarray(book), 0.1)) - 1.0
    # masked rows do not count
    masked = np.concatenate([spread, collapsed], 0)
    mask = np.r_[np.ones(len(spread)), np.zeros(len(collapsed))].astype(bool)
    assert float(rq.usage_entropy(jnp.asarray(masked), jnp.asarray(book), 0.1, jnp.asarray(mask))) == pytest.approx(
        float(rq.usage_entropy(jnp.asarray(spread), jnp.asarray(book), 0.1)), abs=1e-5)


def test_entropy_weight_adds_the_guard_to_the_loss_with_finite_gradients():
    z, books = _inputs(4, b=16, levels=3, k=8, d=4)
    base = rq.residual_quantize(jnp.asarray(z), jnp.asarray(books), beta=0.25)
    guarded = rq.residual_quantize(jnp.asarray(z), jnp.asarray(books), beta=0.25, entropy_weight=0.5,
                                   entropy_temperature=0.2)
    np.testing.assert_array_equal(base.codes, guarded.codes)  # the assignment is unchanged
    extra = 0.5 * float(rq.usage_entropy(base.residuals, jnp.asarray(books), 0.2))
    assert float(guarded.loss) == pytest.approx(float(base.loss) + extra, rel=1e-5)
    grads = jax.grad(lambda zz, bb: rq.residual_quantize(zz, bb, beta=0.25, entropy_weight=0.5).loss, (0, 1))(
        jnp.asarray(z), jnp.asarray(books))
    assert all(bool(jnp.isfinite(g).all()) for g in grads)
    # with weight 0 the codebooks' gradient is the plain VQ one; with the guard it differs
    plain = jax.grad(lambda bb: rq.residual_quantize(jnp.asarray(z), bb, beta=0.25).loss)(jnp.asarray(books))
    assert not np.allclose(plain, grads[1])
