"""Chunked XLA assignment: scans the codebook in tiles with a running (min, argmin).

Never materializes N×K: rows are processed in blocks of ``block_n`` (``lax.map``) and each block
scans code tiles of ``block_k`` (``lax.scan``), so extra memory is one block_n × block_k score
tile plus O(N + K·D). Same arithmetic as ``reference`` (see its docstring).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from u2qt.kernels.codebook_assign import reference
from u2qt.kernels.codebook_assign.config import ChunkedConfig, round_up


def assign(x: jax.Array, codebook: jax.Array, *, metric: str = "l2",
           config: ChunkedConfig | None = None) -> tuple[jax.Array, jax.Array]:
    """Same contract as ``reference.assign``."""
    config = (config or ChunkedConfig()).validate()
    n, d = x.shape
    k = codebook.shape[0]
    block_k = min(config.block_k, k)
    block_n = min(config.block_n, n)
    k_padded, n_padded = round_up(k, block_k), round_up(n, block_n)
    codes, bias, scale = reference.padded_code_terms(codebook, metric, k_padded)
    tiles = (codes.reshape(-1, block_k, d), bias.reshape(-1, block_k), scale.reshape(-1, block_k))

    def one_row_block(x_block):
        def scan_tile(carry, tile):
            best_score, best_index, offset = carry
            tile_codes, tile_bias, tile_scale = tile
            scores = reference.scores_from_dots(reference.dot_nt(x_block, tile_codes), tile_bias, tile_scale)
            tile_min, tile_arg = reference.argmin_lowest(scores)
            better = tile_min < best_score  # strict: earlier tiles win ties (lowest index)
            return (jnp.where(better, tile_min, best_score),
                    jnp.where(better, tile_arg + offset, best_index), offset + block_k), None

        init = (jnp.full((block_n,), jnp.inf, jnp.float32), jnp.zeros((block_n,), jnp.int32),
                jnp.int32(0))
        (best_score, best_index, _), _ = jax.lax.scan(scan_tile, init, tiles)
        return best_score, best_index

    x_blocks = reference.pad_rows(x, n_padded).reshape(-1, block_n, d)
    best_score, best_index = jax.lax.map(one_row_block, x_blocks)
    best_score, best_index = best_score.reshape(-1)[:n], best_index.reshape(-1)[:n]
    return best_index, reference.finalize_distance(best_score, x, metric)


def assign_residual(x: jax.Array, codebooks: jax.Array, *,
                    config: ChunkedConfig | None = None) -> tuple[jax.Array, jax.Array]:
    """Greedy residual assignment, one chunked scan per level."""
    return reference.assign_residual(
            x, codebooks, assign_fn=lambda r, c: assign(r, c, metric="l2", config=config))
