"""Entry points: pick an implementation for the backend and fall back to XLA cleanly.

Implementations (the ``implementation=`` argument):

    None                    auto: fastest measured path for the backend (see ``choose``)
    "reference"             plain jnp; materializes N×K; the export/serving path
    "chunked"               XLA scan over code tiles with running (min, argmin); O(N + K·D) memory
    "pallas_gpu"            Pallas kernel, Triton lowering (GPU only)
    "pallas_tpu"            Pallas kernel, Mosaic lowering (TPU only)
    "pallas_gpu_interpret"  the GPU kernel run by the Pallas interpreter (any backend; tests)
    "pallas_tpu_interpret"  the TPU kernel run by the TPU interpreter with race detection (tests)

``mesh``/``axis``: run under ``jax.shard_map`` over the data axis with the codebook replicated, so
a Pallas custom call is never gathered onto one device (see ``sharded.py``). With ``mesh=None``
the ambient mesh (``jax.set_mesh``) is used when it has ``axis`` with more than one device.
"""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

from u2qt.kernels.codebook_assign import chunked, pallas_gpu, pallas_tpu, reference, residual, sharded

IMPLEMENTATIONS = ("reference", "chunked", "pallas_gpu", "pallas_tpu",
                   "pallas_gpu_interpret", "pallas_tpu_interpret")

# CPU: the chunked scan keeps score tiles in cache. It wins once the N×K score matrix outgrows
# the cache; below these sizes the plain matmul + argmin is as fast (2-core CPU, BENCHMARKS.md).
CPU_CHUNKED_MIN_K = 2048
CPU_CHUNKED_MIN_NK = 1 << 22
# GPU: below this much work (N·K) launch overhead dominates and XLA's fused matmul+argmin is as
# good. Placeholder until the H100 sweep is run (BENCHMARKS.md, "open").
GPU_PALLAS_MIN_NK = 1 << 22
# Without a kernel, materialize at most this many bytes of N×K scores on an accelerator.
XLA_MAX_SCORE_BYTES = 4 << 30
# Kernel limits: beyond these the wrapper falls back to XLA.
GPU_MAX_D = 1024
TPU_MAX_D = 2048


def _backend() -> str:
    return jax.default_backend()


@functools.cache
def _pallas_compiles(implementation: str, residual: bool = False) -> bool:
    """Compiles the kernel once on a tiny input; False (with a warning) if this backend can't."""
    # Abstract inputs: this can run while an outer function is being traced.
    x = jax.ShapeDtypeStruct((8, 16), jnp.bfloat16)
    c = jax.ShapeDtypeStruct((3, 64, 16) if residual else (64, 16), jnp.bfloat16)
    fn = (functools.partial(_assign_residual_unsharded, implementation=implementation) if residual
          else functools.partial(_assign_unsharded, metric="l2", implementation=implementation))
    try:
        jax.jit(fn).lower(x, c).compile()
        return True
    except Exception as e:  # noqa: BLE001  (any lowering/compile failure means: use XLA)
        warnings.warn(f"codebook_assign: {implementation} unavailable on {_backend()} ({e!r}); "
                      "falling back to XLA.")
        return False


def choose(n: int, k: int, d: int, *, residual: bool = False) -> str:
    """The implementation ``implementation=None`` resolves to for this shape on this backend."""
    backend = _backend()
    if backend == "gpu" and d <= GPU_MAX_D and (residual or n * k >= GPU_PALLAS_MIN_NK):
        if _pallas_compiles("pallas_gpu", residual):
            return "pallas_gpu"
    if backend == "tpu" and d <= TPU_MAX_D:
        if _pallas_compiles("pallas_tpu", residual):
            return "pallas_tpu"
    if backend == "cpu":
        return "chunked" if k >= CPU_CHUNKED_MIN_K or n * k >= CPU_CHUNKED_MIN_NK else "reference"
    # Accelerator without a usable kernel: the reference is fast, unless N×K would not fit.
    return "chunked" if n * k * 4 > XLA_MAX_SCORE_BYTES else "reference"


def _check(x: jax.Array, codebook: jax.Array, codebook_ndim: int) -> None:
    if x.ndim != 2 or codebook.ndim != codebook_ndim or x.shape[-1] != codebook.shape[-1]:
        raise ValueError(f"expected x [N,D] and codebook{' [L,K,D]' if codebook_ndim == 3 else ' [K,D]'}"
                         f" with matching D, got {x.shape} and {codebook.shape}")


def _assign_unsharded(x, codebook, *, metric, implementation):
    if implementation == "reference":
        return reference.assign(x, codebook, metric=metric)
    if implementation == "chunked":
        return chunked.assign(x, codebook, metric=metric)
    if implementation in ("pallas_gpu", "pallas_gpu_interpret"):
        return pallas_gpu.assign(x, codebook, metric=metric,
                                 interpret=implementation.endswith("_interpret"))
    if implementation in ("pallas_tpu", "pallas_tpu_interpret"):
        return pallas_tpu.assign(x, codebook, metric=metric,
                                 interpret=implementation.endswith("_interpret"))
    raise ValueError(f"implementation must be None or one of {IMPLEMENTATIONS}, got {implementation!r}")


def _assign_residual_unsharded(x, codebooks, *, implementation):
    return residual.assign_residual(x, codebooks, implementation=implementation)


def _auto(fn, is_residual: bool):
    """fn with implementation=None resolved from the shapes it sees (per shard under a mesh)."""
    def resolved(x, codebook, *, implementation):
        if implementation is None:
            implementation = choose(x.shape[0], codebook.shape[-2], x.shape[1], residual=is_residual)
        return fn(x, codebook, implementation=implementation)
    return resolved


def assign(x: jax.Array, codebook: jax.Array, *, metric: str = "l2",
           implementation: str | None = None, mesh=None, axis: str = "data"
           ) -> tuple[jax.Array, jax.Array]:
    """Nearest code: x [N,D], codebook [K,D] -> (index int32 [N], distance float32 [N]).

    metric "l2": squared Euclidean ||x - c||²; "cosine": 1 - cos(x, c). Ties go to the lowest index.
    No gradient flows through (inputs are stop_gradient'ed): do straight-through and losses in JAX.
    """
    _check(x, codebook, 2)
    reference.check_metric(metric)
    x, codebook = jax.lax.stop_gradient(x), jax.lax.stop_gradient(codebook)
    fn = functools.partial(_auto(functools.partial(_assign_unsharded, metric=metric), False),
                           implementation=implementation)
    return sharded.over_data(fn, x, codebook, mesh=mesh, axis=axis)


def assign_residual(x: jax.Array, codebooks: jax.Array, *, implementation: str | None = None,
                    mesh=None, axis: str = "data") -> tuple[jax.Array, jax.Array]:
    """Greedy residual assignment: x [N,D], codebooks [L,K,D] -> (int32 [N,L], float32 [N,L]).

    r_0 = x; i_l = argmin_k ||r_l - C_l[k]||²; r_{l+1} = r_l - C_l[i_l]; distance_l = ||r_l - C_l[i_l]||².
    """
    _check(x, codebooks, 3)
    x, codebooks = jax.lax.stop_gradient(x), jax.lax.stop_gradient(codebooks)
    fn = functools.partial(_auto(_assign_residual_unsharded, True), implementation=implementation)
    return sharded.over_data(fn, x, codebooks, mesh=mesh, axis=axis)
