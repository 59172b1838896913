"""Fused greedy residual assignment: all L levels in one kernel launch.

        r_0 = x;  i_l = argmin_k ||r_l - C_l[k]||²;  r_{l+1} = r_l - C_l[i_l]

Each program loads its rows of x once, keeps the float32 residual on chip across levels and
writes only L indices and L distances per row. The residual is cast to the codebook dtype for
each level's matmul (so bf16 codebooks give bf16 matmuls), exactly as ``reference.assign_residual``.

GPU (Triton): the winning code is gathered straight from the codebook in global memory/L2.
Rows wider than ``PallasGpuConfig.block_d`` fall back to one ``pallas_gpu.assign`` per level.
TPU (Mosaic): all levels' codebooks sit in VMEM; the winning code is gathered with a one-hot
matmul (exact: one nonzero term, HIGHEST precision for f32), since VMEM has no vector gather.
Codebooks too large for VMEM fall back to one ``pallas_tpu.assign`` launch per level.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from u2qt.kernels.codebook_assign import chunked, pallas_gpu, pallas_tpu, reference
from u2qt.kernels.codebook_assign.config import PallasGpuConfig, PallasTpuConfig, round_up

# Codebooks (all levels, padded) above this many bytes do not stay resident in VMEM (the
# pipeline double-buffers inputs, and v5e has 16 MiB of scoped VMEM by default).
TPU_RESIDENT_CODEBOOK_BYTES = 4 << 20


def _stacked_code_terms(codebooks: jax.Array, k_padded: int, d_padded: int | None = None):
    """Per-level padded codebooks [L, Kp, Dp] and l2 (bias, scale) [L, Kp]."""
    per_level = [reference.padded_code_terms(c, "l2", k_padded, d_padded) for c in codebooks]
    return tuple(jnp.stack(parts) for parts in zip(*per_level))


# ----------------------------------------------------------------------------------------- GPU

def _gpu_kernel(x_ref, c_ref, bias_ref, scale_ref, index_ref, distance_ref, *,
                n: int, levels: int, block_n: int, block_k: int, num_tiles: int):
    row0 = pl.program_id(0) * block_n
    x, row_mask = pallas_gpu.row_tile(x_ref, row0, block_n, n)
    residual = x.astype(jnp.float32)
    for step in range(levels):
        r_in = residual.astype(c_ref.dtype)
        level = jnp.int32(step)  # an array index: the interpreter's store discharge rejects ints
        min_score, index = pallas_gpu.nearest_in_codebook(
                pallas_gpu.resident_dots(r_in, c_ref, block_k, prefix=(level,)), bias_ref, scale_ref,
                block_n=block_n, block_k=block_k, num_tiles=num_tiles, prefix=(level,))
        pallas_gpu.store_rows(index_ref, (level,), row0, index, row_mask)
        pallas_gpu.store_rows(distance_ref, (level,), row0,
                              reference.finalize_distance(min_score, r_in, "l2"), row_mask)
        if step + 1 < levels:
            residual = residual - c_ref[level, index, :].astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def assign_residual_gpu(x: jax.Array, codebooks: jax.Array, *,
                        config: PallasGpuConfig | None = None, interpret: bool = False):
    """Fused residual assignment, Triton lowering. Same contract as ``reference.assign_residual``.

    The residual stays on chip, so rows wider than ``config.block_d`` take one launch per level.
    """
    config = (config or PallasGpuConfig()).validate()
    n, d = x.shape
    levels, k, _ = codebooks.shape
    block_n, block_k = pallas_gpu.block_sizes(config, n, k)
    d_padded = pallas_gpu.padded_dim(d)
    if d_padded > config.block_d:
        return reference.assign_residual(x, codebooks, assign_fn=lambda r, c: pallas_gpu.assign(
                r, c, metric="l2", config=config, interpret=interpret))
    codes, bias, scale = _stacked_code_terms(codebooks, round_up(k, block_k), d_padded)
    kernel = functools.partial(_gpu_kernel, n=n, levels=levels, block_n=block_n, block_k=block_k,
                               num_tiles=codes.shape[1] // block_k)
    index, distance = pl.pallas_call(
            kernel,
            out_shape=(jax.ShapeDtypeStruct((levels, n), jnp.int32),
                       jax.ShapeDtypeStruct((levels, n), jnp.float32)),
            grid=(pl.cdiv(n, block_n),),
            compiler_params=pallas_gpu.compiler_params(config),
            interpret=interpret,
            name="codebook_assign_residual",
    )(pallas_gpu.pad_features(x, d_padded), codes, bias, scale)
    return index.T, distance.T


# ----------------------------------------------------------------------------------------- TPU

def _tpu_kernel(x_ref, c_ref, bias_ref, scale_ref, index_ref, distance_ref, *,
                levels: int, block_k: int, num_tiles: int):
    residual = x_ref[...].astype(jnp.float32)
    block_n = residual.shape[0]
    lane = jax.lax.broadcasted_iota(jnp.int32, (block_n, block_k), 1)
    gather_precision = jax.lax.Precision.HIGHEST if c_ref.dtype == jnp.float32 else None
    for level in range(levels):
        r_in = residual.astype(c_ref.dtype)

        def tile(t, carry, r_in=r_in, level=level):
            best, best_index = carry
            k0 = pl.multiple_of(t * block_k, block_k)
            scores = reference.scores_from_dots(
                    reference.dot_nt(r_in, c_ref[level, pl.ds(k0, block_k), :]),
                    bias_ref[pl.ds(level, 1), pl.ds(k0, block_k)],
                    scale_ref[pl.ds(level, 1), pl.ds(k0, block_k)])
            better = scores < best
            return jnp.where(better, scores, best), jnp.where(better, lane + k0, best_index)

        init = (jnp.full((block_n, block_k), jnp.inf, jnp.float32),
                jnp.zeros((block_n, block_k), jnp.int32))
        min_score, index = pallas_tpu.lowest_argmin_over_lanes(
                *jax.lax.fori_loop(0, num_tiles, tile, init))
        index_ref[:, level:level + 1] = index
        distance_ref[:, level:level + 1] = reference.finalize_distance(
                min_score[:, 0], r_in, "l2")[:, None]
        if level + 1 < levels:
            def gather(t, code, index=index, level=level):
                k0 = pl.multiple_of(t * block_k, block_k)
                one_hot = (lane + k0 == index).astype(c_ref.dtype)
                return code + jnp.dot(one_hot, c_ref[level, pl.ds(k0, block_k), :],
                                      precision=gather_precision, preferred_element_type=jnp.float32)
            residual = residual - jax.lax.fori_loop(0, num_tiles, gather, jnp.zeros_like(residual))


def tpu_codebooks_fit(codebooks: jax.Array, config: PallasTpuConfig | None = None) -> bool:
    config = config or PallasTpuConfig()
    levels, k, d = codebooks.shape
    k_padded = round_up(k, min(config.block_k, round_up(k, 128)))
    return levels * k_padded * d * codebooks.dtype.itemsize <= TPU_RESIDENT_CODEBOOK_BYTES


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def assign_residual_tpu(x: jax.Array, codebooks: jax.Array, *,
                        config: PallasTpuConfig | None = None, interpret: bool = False):
    """Fused residual assignment, Mosaic TPU. Same contract as ``reference.assign_residual``."""
    config = (config or PallasTpuConfig()).validate()
    if not tpu_codebooks_fit(codebooks, config):
        return reference.assign_residual(x, codebooks, assign_fn=lambda r, c: pallas_tpu.assign(
                r, c, metric="l2", config=config, interpret=interpret))
    n, d = x.shape
    levels, k, _ = codebooks.shape
    block_k = min(config.block_k, round_up(k, 128))
    block_n = min(config.block_n, round_up(n, 16))
    codes, bias, scale = _stacked_code_terms(codebooks, round_up(k, block_k))
    kernel = functools.partial(_tpu_kernel, levels=levels, block_k=block_k,
                               num_tiles=codes.shape[1] // block_k)
    whole = lambda shape: pl.BlockSpec(shape, lambda i: (0,) * len(shape))
    row_block = pl.BlockSpec((block_n, levels), lambda i: (i, 0))
    return pl.pallas_call(
            kernel,
            out_shape=(jax.ShapeDtypeStruct((n, levels), jnp.int32),
                       jax.ShapeDtypeStruct((n, levels), jnp.float32)),
            grid=(pl.cdiv(n, block_n),),
            in_specs=[pl.BlockSpec((block_n, d), lambda i: (i, 0)), whole(codes.shape),
                      whole(bias.shape), whole(scale.shape)],
            out_specs=(row_block, row_block),
            compiler_params=pltpu.CompilerParams(dimension_semantics=(pltpu.PARALLEL,)),
            interpret=pallas_tpu.interpret_params(interpret),
            name="codebook_assign_residual",
    )(x.astype(codebooks.dtype), codes, bias, scale)


# ------------------------------------------------------------------------------------ dispatch

def assign_residual(x: jax.Array, codebooks: jax.Array, *, implementation: str):
    """Residual assignment with the named implementation (see ``api.IMPLEMENTATIONS``)."""
    interpret = implementation.endswith("_interpret")
    if implementation == "reference":
        return reference.assign_residual(x, codebooks)
    if implementation == "chunked":
        return chunked.assign_residual(x, codebooks)
    if implementation in ("pallas_gpu", "pallas_gpu_interpret"):
        return assign_residual_gpu(x, codebooks, interpret=interpret)
    if implementation in ("pallas_tpu", "pallas_tpu_interpret"):
        return assign_residual_tpu(x, codebooks, interpret=interpret)
    raise ValueError(f"unknown implementation {implementation!r} (see api.IMPLEMENTATIONS)")
