"""Pallas TPU kernel (Mosaic): fused distance + argmin over a (row block, code tile) grid.

Grid iterations run in order on a TPU core, so the code-tile axis is the trailing "arbitrary"
axis: a lane-wise running (min score, index) of shape [block_n, block_k] lives in VMEM scratch,
is initialised on the first tile and reduced over lanes on the last (``pl.when``). Rows sit on
sublanes and codes on lanes of the score tile, so blocks tile as (8, 128). D is always the full
block width. Partial row blocks are fine (their extra rows are dropped on write); the codebook is
padded to a multiple of ``block_k`` with codes that never win.

Outputs are [N, 1] columns: they are O(N) next to the O(N·K·D) matmul.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from u2qt.kernels.codebook_assign import reference
from u2qt.kernels.codebook_assign.config import PallasTpuConfig, round_up


def interpret_params(interpret: bool):
    """TPU interpreter with race detection when interpreting, else compile for TPU."""
    return pltpu.InterpretParams(detect_races=True) if interpret else False


def lowest_argmin_over_lanes(best, best_index):
    """Row-wise (min, lowest index attaining it) of lane-wise running minima, as [rows, 1]."""
    min_score = jnp.min(best, axis=1, keepdims=True)
    big = jnp.int32(jnp.iinfo(jnp.int32).max)
    index = jnp.min(jnp.where(best == min_score, best_index, big), axis=1, keepdims=True)
    return min_score, jnp.where(index == big, 0, index)


def _assign_kernel(x_ref, c_ref, bias_ref, scale_ref, index_ref, score_ref, best_ref,
                   best_index_ref, *, block_k: int):
    t = pl.program_id(1)

    @pl.when(t == 0)
    def _init():
        best_ref[...] = jnp.full(best_ref.shape, jnp.inf, jnp.float32)
        best_index_ref[...] = jnp.zeros(best_index_ref.shape, jnp.int32)

    scores = reference.scores_from_dots(
            reference.dot_nt(x_ref[...], c_ref[...]), bias_ref[...], scale_ref[...])
    lane = jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1) + t * block_k
    better = scores < best_ref[...]  # strict: an earlier tile keeps a tie (lower index)
    best_ref[...] = jnp.where(better, scores, best_ref[...])
    best_index_ref[...] = jnp.where(better, lane, best_index_ref[...])

    @pl.when(t == pl.num_programs(1) - 1)
    def _finalize():
        min_score, index = lowest_argmin_over_lanes(best_ref[...], best_index_ref[...])
        index_ref[...] = index
        score_ref[...] = min_score


@functools.partial(jax.jit, static_argnames=("metric", "config", "interpret"))
def assign(x: jax.Array, codebook: jax.Array, *, metric: str = "l2",
           config: PallasTpuConfig | None = None, interpret: bool = False
           ) -> tuple[jax.Array, jax.Array]:
    """Same contract as ``reference.assign``. ``interpret=True``: TPU interpreter, race detection."""
    config = (config or PallasTpuConfig()).validate()
    n, d = x.shape
    k = codebook.shape[0]
    dtype = jnp.promote_types(x.dtype, codebook.dtype)
    block_k = min(config.block_k, round_up(k, 128))
    block_n = min(config.block_n, round_up(n, 16))
    codes, bias, scale = reference.padded_code_terms(codebook.astype(dtype), metric,
                                                     round_up(k, block_k))
    grid = (pl.cdiv(n, block_n), codes.shape[0] // block_k)
    row_block = pl.BlockSpec((block_n, 1), lambda i, t: (i, 0))
    index, min_score = pl.pallas_call(
            functools.partial(_assign_kernel, block_k=block_k),
            out_shape=(jax.ShapeDtypeStruct((n, 1), jnp.int32),
                       jax.ShapeDtypeStruct((n, 1), jnp.float32)),
            grid=grid,
            in_specs=[
                    pl.BlockSpec((block_n, d), lambda i, t: (i, 0)),
                    pl.BlockSpec((block_k, d), lambda i, t: (t, 0)),
                    pl.BlockSpec((1, block_k), lambda i, t: (0, t)),
                    pl.BlockSpec((1, block_k), lambda i, t: (0, t)),
            ],
            out_specs=(row_block, row_block),
            scratch_shapes=[pltpu.VMEM((block_n, block_k), jnp.float32),
                            pltpu.VMEM((block_n, block_k), jnp.int32)],
            compiler_params=pltpu.CompilerParams(
                    dimension_semantics=(pltpu.PARALLEL, pltpu.ARBITRARY)),
            interpret=interpret_params(interpret),
            name="codebook_assign",
    )(x.astype(dtype), codes, bias[None, :], scale[None, :])
    return index[:, 0], reference.finalize_distance(min_score[:, 0], x, metric)
