"""u2qt.kernels.codebook_assign: every implementation against the reference (interpret mode on CPU).

Random inputs are checked for *optimality* against a float64 brute force (the chosen code is
within rounding of the best one, and the returned distance is that code's distance), so the
tests do not depend on how ties between nearly-equal codes are rounded. Exact agreement,
including the lowest-index rule, is checked on integer-valued inputs where every implementation
computes the same scores exactly.
"""
from __future__ import annotations

import functools
import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from u2qt.kernels import bench
from u2qt.kernels.codebook_assign import api, assign, assign_residual, chunked, config, reference
from u2qt.kernels.codebook_assign import pallas_gpu, pallas_tpu, residual

KERNEL_IMPLS = ("chunked", "pallas_gpu_interpret", "pallas_tpu_interpret")
ALL_IMPLS = ("reference",) + KERNEL_IMPLS
# Small blocks so that small test shapes still cover several tiles and partial blocks.
SMALL = {
    "chunked": dict(config=config.ChunkedConfig(block_n=16, block_k=32)),
    # block_d=32: D <= 32 keeps rows on chip, wider D streams chunks (and the residual falls back).
    "pallas_gpu_interpret": dict(config=config.PallasGpuConfig(block_n=16, block_k=32, block_d=32),
                                 interpret=True),
    "pallas_tpu_interpret": dict(config=config.PallasTpuConfig(block_n=16, block_k=128),
                                 interpret=True),
}
MODULES = {"chunked": chunked, "pallas_gpu_interpret": pallas_gpu,
           "pallas_tpu_interpret": pallas_tpu}


def _assign_small_blocks(impl, x, c, metric):
  if impl == "reference":
    return reference.assign(x, c, metric=metric)
  return MODULES[impl].assign(x, c, metric=metric, **SMALL[impl])


def _residual_small_blocks(impl, x, c):
  if impl == "reference":
    return reference.assign_residual(x, c)
  if impl == "chunked":
    return chunked.assign_residual(x, c, **SMALL[impl])
  if impl == "pallas_gpu_interpret":
    return residual.assign_residual_gpu(x, c, **SMALL[impl])
  return residual.assign_residual_tpu(x, c, **SMALL[impl])


def _seed(*case) -> int:
  """A different, reproducible seed for every test case."""
  return zlib.crc32(repr(case).encode())


def _rng_inputs(seed, n, k, d, dtype, levels=None):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)).astype(np.float32)
  c = rng.standard_normal((k, d) if levels is None else (levels, k, d)).astype(np.float32)
  return jnp.asarray(x).astype(dtype), jnp.asarray(c).astype(dtype)


def _f64(a):
  return np.asarray(jnp.asarray(a).astype(jnp.float32), np.float64)


def _true_distances(x, c, metric):
  x, c = _f64(x), _f64(c)
  if metric == "l2":
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
  nx = np.maximum(np.linalg.norm(x, axis=1), reference.NORM_EPS)
  nc = np.maximum(np.linalg.norm(c, axis=1), reference.NORM_EPS)
  return 1.0 - (x @ c.T) / nx[:, None] / nc[None, :]


def _tolerance(x, c, metric):
  """Rounding slack of an f32-accumulated score: a few ulps of the largest term."""
  if metric == "cosine":
    return 1e-5
  scale = (_f64(x) ** 2).sum(1).max() + (_f64(c) ** 2).sum(-1).max()
  return 1e-5 * scale


def check_nearest(x, c, metric, index, distance):
  """index is a nearest code (up to rounding) and distance its distance."""
  true = _true_distances(x, c, metric)
  index, distance = np.asarray(index), np.asarray(distance)
  assert index.dtype == np.int32 and distance.dtype == np.float32
  assert index.shape == distance.shape == (x.shape[0],)
  assert ((0 <= index) & (index < c.shape[0])).all()
  tol = _tolerance(x, c, metric)
  chosen = true[np.arange(len(index)), index]
  np.testing.assert_array_less(chosen - true.min(1), tol)
  np.testing.assert_allclose(distance, chosen, atol=tol, rtol=0)


def check_residual(x, codebooks, indices, distances):
  """Each level's index is nearest to that implementation's own residual, distances match."""
  indices, distances = np.asarray(indices), np.asarray(distances)
  levels = codebooks.shape[0]
  assert indices.shape == distances.shape == (x.shape[0], levels)
  assert indices.dtype == np.int32 and distances.dtype == np.float32
  r = np.asarray(x.astype(jnp.float32))
  for level in range(levels):
    r_in = jnp.asarray(r).astype(codebooks.dtype)  # each level sees the residual in codebook dtype
    check_nearest(r_in, codebooks[level], "l2", indices[:, level], distances[:, level])
    r = r - np.asarray(codebooks[level].astype(jnp.float32))[indices[:, level]]


# ------------------------------------------------------------------------------ single level

@pytest.mark.parametrize("metric", reference.METRICS)
def test_reference_is_nearest(metric):
  x, c = _rng_inputs(0, 50, 70, 24, jnp.float32)
  check_nearest(x, c, metric, *reference.assign(x, c, metric=metric))


@pytest.mark.parametrize("impl", KERNEL_IMPLS)
@pytest.mark.parametrize("metric", reference.METRICS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("n,k,d", [(37, 300, 48), (5, 64, 16)])
def test_matches_reference(impl, metric, dtype, n, k, d):
  seed = _seed(impl, metric, dtype, n, k, d)  # fresh inputs for every case
  x, c = _rng_inputs(seed, n, k, d, dtype)
  index, distance = _assign_small_blocks(impl, x, c, metric)
  check_nearest(x, c, metric, index, distance)
  ref_index, ref_distance = reference.assign(x, c, metric=metric)
  same = np.asarray(index) == np.asarray(ref_index)
  assert same.mean() >= 0.9  # differing rows are near-ties, already accepted by check_nearest
  np.testing.assert_allclose(np.asarray(distance)[same], np.asarray(ref_distance)[same],
                             rtol=1e-5, atol=1e-5)


def _tied_inputs(seed, n, k, d, dtype):
  """Integer inputs (exact scores) with every code duplicated at a later index."""
  rng = np.random.default_rng(seed)
  base = rng.integers(-3, 4, size=(k // 2, d))
  c = np.concatenate([base, base[rng.permutation(k // 2)]], 0)
  x = np.concatenate([base[rng.integers(0, k // 2, size=n // 2)],  # exact matches: distance 0
                      rng.integers(-3, 4, size=(n - n // 2, d))], 0)
  return jnp.asarray(x, dtype), jnp.asarray(c, dtype)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("metric", reference.METRICS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_ties_go_to_lowest_index(impl, metric, dtype):
  x, c = _tied_inputs(1, 40, 200, 20, dtype)
  index, distance = _assign_small_blocks(impl, x, c, metric)
  true = _true_distances(x, c, metric)
  best = true.min(1)
  tied = np.isclose(true, best[:, None], atol=1e-6, rtol=0)
  assert (tied.sum(1) >= 2).all()  # every row really has a tie
  np.testing.assert_array_equal(np.asarray(index), tied.argmax(1))  # argmax: first True
  np.testing.assert_allclose(np.asarray(distance), best, atol=1e-5)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_equidistant_and_identical_codes(impl):
  # x = 0 is equidistant from ±e_j; identical codes everywhere: index 0 for every row.
  d = 16
  c = jnp.concatenate([-jnp.eye(d), jnp.eye(d), jnp.eye(d)], 0)
  x = jnp.zeros((9, d))
  np.testing.assert_array_equal(_assign_small_blocks(impl, x, c, "l2")[0], 0)
  same = jnp.ones((150, d))
  index, distance = _assign_small_blocks(impl, jnp.ones((9, d)) * 2, same, "cosine")
  np.testing.assert_array_equal(index, 0)
  np.testing.assert_allclose(distance, 0.0, atol=1e-6)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_zero_vectors_under_cosine(impl):
  x = jnp.zeros((3, 16)).at[1, 0].set(1.0)
  c = jnp.zeros((64, 16)).at[5, 0].set(-1.0).at[7, 0].set(2.0)
  index, distance = _assign_small_blocks(impl, x, c, "cosine")
  np.testing.assert_array_equal(index, [0, 7, 0])
  np.testing.assert_allclose(distance, [1.0, 0.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_api_under_jit_with_gradients(impl):
  """assign works inside jit; gradients see stop_gradient inputs (zero), not an error."""
  x, c = _rng_inputs(2, 24, 130, 16, jnp.float32)

  def loss(x, c):
    index, distance = assign(x, c, metric="l2", implementation=impl)
    return jnp.sum(distance) + jnp.sum(c[index] * x)  # gradient only through the gather

  value, (gx, gc) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, c)
  index, _ = reference.assign(x, c)
  np.testing.assert_allclose(gx, c[index], rtol=1e-6)
  np.testing.assert_allclose(gc, jnp.zeros_like(c).at[index].add(x), rtol=1e-5, atol=1e-6)
  assert np.isfinite(value)


def test_large_k_and_d_chunked():
  """The extremes of the supported range: K = 65,536 codes; D = 1024 (chunked, reference)."""
  x, c = _rng_inputs(3, 8, 65536, 16, jnp.float32)
  check_nearest(x, c, "l2", *chunked.assign(x, c))
  x, c = _rng_inputs(4, 8, 100, 1024, jnp.bfloat16)
  check_nearest(x, c, "l2", *chunked.assign(x, c))


@pytest.mark.parametrize("impl", ["pallas_gpu_interpret", "pallas_tpu_interpret"])
def test_default_blocks_interpret(impl):
  """Default (production) block sizes: K spans several tiles, N a partial block, D not a pow2."""
  x, c = _rng_inputs(5, 100, 1100, 96, jnp.bfloat16)
  check_nearest(x, c, "l2", *MODULES[impl].assign(x, c, interpret=True))


def test_tpu_interpret_detects_no_races():
  interpret_state = pytest.importorskip("jax._src.pallas.mosaic.interpret.interpret_pallas_call")
  x, c = _rng_inputs(6, 40, 300, 32, jnp.float32)
  jax.block_until_ready(pallas_tpu.assign(x, c, **SMALL["pallas_tpu_interpret"]))
  assert interpret_state.races is not None and not interpret_state.races.races_found
  jax.block_until_ready(residual.assign_residual_tpu(
      x, jnp.stack([c, c * 0.5]), **SMALL["pallas_tpu_interpret"]))
  assert not interpret_state.races.races_found


def test_triton_and_mosaic_lowering_on_cpu_host():
  """The kernels lower to their device IR (Triton / Mosaic) without a device present."""
  x = jax.ShapeDtypeStruct((1000, 96), jnp.bfloat16)
  c = jax.ShapeDtypeStruct((1100, 96), jnp.bfloat16)
  cs = jax.ShapeDtypeStruct((3, 256, 96), jnp.bfloat16)
  for platform, fns in [("cuda", (pallas_gpu.assign, residual.assign_residual_gpu)),
                        ("tpu", (pallas_tpu.assign, residual.assign_residual_tpu))]:
    for fn, cb in zip(fns, (c, cs)):
      text = jax.jit(fn).trace(x, cb).lower(lowering_platforms=(platform,)).as_text()
      assert ("xla.gpu.triton" if platform == "cuda" else "tpu_custom_call") in text


def test_reference_exports_with_symbolic_batch():
  """The serving path: jax.export for CPU, CUDA and TPU at once, with a symbolic batch size."""
  n = jax.export.symbolic_shape("n")[0]
  x = jax.ShapeDtypeStruct((n, 24), jnp.float32)
  for fn, c in ((assign, jax.ShapeDtypeStruct((70, 24), jnp.float32)),
                (assign_residual, jax.ShapeDtypeStruct((3, 70, 24), jnp.float32))):
    exported = jax.export.export(jax.jit(functools.partial(fn, implementation="reference")),
                                 platforms=["cpu", "cuda", "tpu"])(x, c)
    xs, cs = _rng_inputs(11, 9, 70, 24, jnp.float32, levels=None if c.ndim == 2 else 3)
    (index, distance), (want_index, want_distance) = (
        exported.call(xs, cs), fn(xs, cs, implementation="reference"))
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_allclose(distance, want_distance, rtol=1e-6)


# ---------------------------------------------------------------------------------- residual

@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("n,levels,k,d", [(37, 3, 64, 32), (20, 2, 150, 20), (9, 2, 40, 48)])
def test_residual_is_greedy_nearest(impl, dtype, n, levels, k, d):
  seed = _seed(impl, dtype, n, levels, k, d)
  x, c = _rng_inputs(seed, n, k, d, dtype, levels=levels)
  c = (c.astype(jnp.float32) * 0.5).astype(dtype)
  indices, distances = _residual_small_blocks(impl, x, c)
  check_residual(x, c, indices, distances)
  ref_indices, _ = reference.assign_residual(x, c)
  assert (np.asarray(indices) == np.asarray(ref_indices)).all(axis=1).mean() >= 0.9


@pytest.mark.parametrize("impl", KERNEL_IMPLS)
def test_residual_recovers_planted_codes_and_ties(impl):
  """x = Σ_l C_l[i_l] exactly (integers): every implementation returns the planted codes, the
  lowest index among duplicated codes, and zero final distance."""
  rng = np.random.default_rng(7)
  levels, k, d, n = 3, 96, 16, 30
  scale = np.array([64, 8, 1])[:, None, None]  # levels far apart: greedy recovers each one
  base = rng.integers(-3, 4, size=(levels, k // 2, d))
  c = np.concatenate([base, base], axis=1) * scale  # code j == code j + k/2
  planted = rng.integers(0, k // 2, size=(n, levels))
  x = sum(c[l, planted[:, l]] for l in range(levels))
  indices, distances = _residual_small_blocks(impl, jnp.asarray(x, jnp.float32),
                                              jnp.asarray(c, jnp.float32))
  np.testing.assert_array_equal(indices, planted)
  np.testing.assert_allclose(np.asarray(distances)[:, -1], 0.0, atol=1e-6)


def test_tpu_residual_falls_back_when_codebooks_exceed_vmem():
  x, c = _rng_inputs(8, 10, 9000, 128, jnp.float32, levels=1)
  assert not residual.tpu_codebooks_fit(c)
  indices, distances = residual.assign_residual_tpu(x, c, interpret=True)
  check_residual(x, c, indices, distances)


# ------------------------------------------------------------------------------------ api

def test_choose_on_cpu_uses_xla():
  assert api.choose(1024, 256, 64) == "reference"
  assert api.choose(1024, api.CPU_CHUNKED_MIN_K, 64) == "chunked"
  assert api.choose(1024, 256, 64, residual=True) == "reference"


@pytest.mark.parametrize("implementation", [None, "reference", "chunked", "pallas_gpu_interpret"])
def test_public_api_shapes_and_dtypes(implementation):
  x, c = _rng_inputs(9, 33, 70, 24, jnp.bfloat16)
  index, distance = assign(x, c, metric="cosine", implementation=implementation)
  assert index.shape == (33,) and index.dtype == jnp.int32 and distance.dtype == jnp.float32
  indices, distances = assign_residual(x, jnp.stack([c, c]), implementation=implementation)
  assert indices.shape == (33, 2) and indices.dtype == jnp.int32
  assert distances.dtype == jnp.float32


def test_bad_arguments_raise():
  x, c = _rng_inputs(10, 8, 16, 16, jnp.float32)
  with pytest.raises(ValueError, match="implementation"):
    assign(x, c, implementation="cuda")
  with pytest.raises(ValueError, match="metric"):
    assign(x, c, metric="dot")
  with pytest.raises(ValueError, match="matching D"):
    assign(x, c[:, :8])
  with pytest.raises(ValueError, match="implementation"):
    assign_residual(x, c[None], implementation="nope")
  with pytest.raises(ValueError):
    config.PallasGpuConfig(block_n=100).validate()
  with pytest.raises(ValueError):
    config.PallasTpuConfig(block_k=64).validate()
  with pytest.raises(ValueError):
    config.ChunkedConfig(block_n=0).validate()


def test_benchmark_runs_end_to_end(tmp_path, capsys):
  out = tmp_path / "bench.json"
  bench.main(["--preset", "smoke", "--reps", "1", "--json", str(out)])
  rows = json.loads(out.read_text())["rows"]
  assert {r["implementation"] for r in rows} == {"reference", "chunked", "auto"}
  assert all(r["error"] is None and r["time_ms"] > 0 for r in rows)
  assert "% matmul" in capsys.readouterr().out
