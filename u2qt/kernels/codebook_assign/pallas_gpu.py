"""Pallas GPU kernel (Triton lowering): fused distance + argmin, distances never leave the chip.

One program per ``block_n`` rows of x. It keeps its x tile resident (D up to ``block_d``; wider
rows are re-read in D-chunks of ``block_d`` for each code tile) and loops over code tiles of
``block_k`` with a lane-wise running (min score, index) of shape [block_n, block_k]: the inner
loop is one matmul plus three elementwise ops per score (no cross-lane reduction); rows are
reduced once at the end, ties going to the lowest index. Grid programs run in parallel and never
accumulate across the grid.

Since jax 0.9 the default GPU Pallas lowering is Mosaic GPU, which has no ``dot_general`` in
``pallas_call``; passing ``pallas.triton.CompilerParams`` selects the Triton lowering. Triton
needs power-of-two tile shapes, so D is zero-padded to a power of two (>= 16) when it is not one,
and the codebook is padded to a multiple of ``block_k`` with codes that never win. Rows are not
padded: loads and stores are masked.

Triton custom calls are not ``jax.export``-stable: serve from ``reference``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from u2qt.kernels.codebook_assign import reference
from u2qt.kernels.codebook_assign.config import PallasGpuConfig, next_pow2, round_up


def padded_dim(d: int) -> int:
    return max(16, next_pow2(d))


def pad_features(a: jax.Array, d_padded: int) -> jax.Array:
    if a.shape[-1] == d_padded:
        return a
    return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, d_padded - a.shape[-1])])


def row_tile(ref, row0, block_n: int, n: int):
    """Rows [row0, row0 + block_n) of a [N, D] ref; rows past ``n`` read as zero. -> (tile, mask)."""
    row_mask = row0 + jax.lax.broadcasted_iota(jnp.int32, (block_n,), 0) < n
    return plgpu.load(ref.at[pl.ds(row0, block_n), :], mask=row_mask[:, None], other=0), row_mask


def store_rows(ref, prefix: tuple, row0, value, row_mask) -> None:
    """ref[*prefix, row0:row0 + len(value)] = value where row_mask (one indexer: Triton needs it)."""
    plgpu.store(ref.at[(*prefix, pl.ds(row0, value.shape[0]))], value, mask=row_mask)


def nearest_in_codebook(tile_dots, bias_ref, scale_ref, *, block_n: int, block_k: int,
                        num_tiles: int, prefix: tuple = ()):
    """(min score, lowest argmin) [block_n] of a row block against all code tiles.

    ``tile_dots(k0)`` gives the row block's dot products [block_n, block_k] (f32) with codes
    [k0, k0 + block_k); ``bias_ref[*prefix]``/``scale_ref[*prefix]`` are the codes' [K_padded]
    terms (``prefix=(level,)`` for stacked residual codebooks).
    """
    lane = jax.lax.broadcasted_iota(jnp.int32, (block_n, block_k), 1)

    def tile(t, carry):
        best, best_index = carry
        k0 = pl.multiple_of(t * block_k, block_k)
        bias = bias_ref[(*prefix, pl.ds(k0, block_k))][None, :]
        scale = scale_ref[(*prefix, pl.ds(k0, block_k))][None, :]
        scores = reference.scores_from_dots(tile_dots(k0), bias, scale)
        better = scores < best  # strict: an earlier tile keeps a tie (lower index, same lane)
        return jnp.where(better, scores, best), jnp.where(better, lane + k0, best_index)

    init = (jnp.full((block_n, block_k), jnp.inf, jnp.float32),
            jnp.zeros((block_n, block_k), jnp.int32))
    best, best_index = jax.lax.fori_loop(0, num_tiles, tile, init)
    min_score = jnp.min(best, axis=1)
    big = jnp.int32(jnp.iinfo(jnp.int32).max)
    index = jnp.min(jnp.where(best == min_score[:, None], best_index, big), axis=1)
    return min_score, jnp.where(index == big, 0, index)


def resident_dots(x, c_ref, block_k: int, prefix: tuple = ()):
    """tile_dots for a row block x [block_n, D] held on chip for the whole codebook scan."""
    return lambda k0: reference.dot_nt(x, c_ref[(*prefix, pl.ds(k0, block_k), slice(None))])


def streamed_dots(x_ref, c_ref, row0, row_mask, block_k: int, block_d: int):
    """tile_dots re-reading x in D-chunks of ``block_d`` (for D too wide to keep x on chip)."""
    def dots(k0):
        acc = None
        for d0 in range(0, x_ref.shape[1], block_d):
            x = plgpu.load(x_ref.at[pl.ds(row0, row_mask.shape[0]), pl.ds(d0, block_d)],
                           mask=row_mask[:, None], other=0)
            part = reference.dot_nt(x, c_ref[pl.ds(k0, block_k), pl.ds(d0, block_d)])
            acc = part if acc is None else acc + part
        return acc
    return dots


def _assign_kernel(x_ref, c_ref, bias_ref, scale_ref, index_ref, score_ref, *,
                   n: int, block_n: int, block_k: int, block_d: int, num_tiles: int):
    row0 = pl.program_id(0) * block_n
    row_mask = row0 + jax.lax.broadcasted_iota(jnp.int32, (block_n,), 0) < n
    if x_ref.shape[1] <= block_d:
        x, _ = row_tile(x_ref, row0, block_n, n)
        tile_dots = resident_dots(x, c_ref, block_k)
    else:
        tile_dots = streamed_dots(x_ref, c_ref, row0, row_mask, block_k, block_d)
    min_score, index = nearest_in_codebook(tile_dots, bias_ref, scale_ref, block_n=block_n,
                                           block_k=block_k, num_tiles=num_tiles)
    store_rows(index_ref, (), row0, index, row_mask)
    store_rows(score_ref, (), row0, min_score, row_mask)


def block_sizes(config: PallasGpuConfig, n: int, k: int) -> tuple[int, int]:
    """Configured blocks, shrunk (to powers of two >= 16) for small N or K."""
    return min(config.block_n, max(16, next_pow2(n))), min(config.block_k, max(16, next_pow2(k)))


def compiler_params(config: PallasGpuConfig):
    return plgpu.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)


@functools.partial(jax.jit, static_argnames=("metric", "config", "interpret"))
def assign(x: jax.Array, codebook: jax.Array, *, metric: str = "l2",
           config: PallasGpuConfig | None = None, interpret: bool = False
           ) -> tuple[jax.Array, jax.Array]:
    """Same contract as ``reference.assign``."""
    config = (config or PallasGpuConfig()).validate()
    n, d = x.shape
    k = codebook.shape[0]
    dtype = jnp.promote_types(x.dtype, codebook.dtype)
    block_n, block_k = block_sizes(config, n, k)
    d_padded = padded_dim(d)
    codes, bias, scale = reference.padded_code_terms(
            codebook.astype(dtype), metric, round_up(k, block_k), d_padded)
    kernel = functools.partial(_assign_kernel, n=n, block_n=block_n, block_k=block_k,
                               block_d=min(config.block_d, d_padded),
                               num_tiles=codes.shape[0] // block_k)
    index, min_score = pl.pallas_call(
            kernel,
            out_shape=(jax.ShapeDtypeStruct((n,), jnp.int32), jax.ShapeDtypeStruct((n,), jnp.float32)),
            grid=(pl.cdiv(n, block_n),),
            compiler_params=compiler_params(config),
            interpret=interpret,
            name="codebook_assign",
    )(pad_features(x.astype(dtype), d_padded), codes, bias, scale)
    return index, reference.finalize_distance(min_score, x, metric)
