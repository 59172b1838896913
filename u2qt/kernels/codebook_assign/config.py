"""Block sizes for each implementation, with validation.

One frozen dataclass per implementation; ``validate`` raises on a block size the backend cannot
tile. Defaults are chosen for the benchmark shapes (see BENCHMARKS.md); they are starting points
for the GPU/TPU sweep, which has not been run on hardware yet.
"""
from __future__ import annotations

import dataclasses


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


@dataclasses.dataclass(frozen=True)
class ChunkedConfig:
    """XLA chunked scan: rows in blocks of ``block_n``, codes in tiles of ``block_k``.

    Extra memory is one block_n × block_k score tile plus the O(N) running (min, argmin).
    """
    block_n: int = 1024
    block_k: int = 512

    def validate(self) -> "ChunkedConfig":
        if self.block_n < 1 or self.block_k < 1:
            raise ValueError(f"block sizes must be positive: {self}")
        return self


@dataclasses.dataclass(frozen=True)
class PallasGpuConfig:
    """Triton-lowered Pallas kernel: one program per ``block_n`` rows, looping over code tiles.

    Triton needs power-of-two block shapes; D is padded to a power of two (>= 16) in the wrapper.
    Rows up to ``block_d`` wide stay on chip (and the fused residual kernel needs that); wider rows
    are streamed in chunks of ``block_d``. Registers per thread hold the [block_n, block_k] matmul
    accumulator plus the running (min, index) of the same shape: keep block_n·block_k·3 /
    (32·num_warps) well under 255.
    """
    block_n: int = 128
    block_k: int = 64
    block_d: int = 128
    num_warps: int = 8
    num_stages: int = 3

    def validate(self) -> "PallasGpuConfig":
        for name in ("block_n", "block_k", "block_d"):
            value = getattr(self, name)
            if not _is_pow2(value) or value < 16:
                raise ValueError(f"{name} must be a power of two >= 16 (tl.dot), got {value}")
        if not _is_pow2(self.num_warps):
            raise ValueError(f"num_warps must be a power of two, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {self.num_stages}")
        return self


@dataclasses.dataclass(frozen=True)
class PallasTpuConfig:
    """Mosaic TPU kernel: grid (row blocks, code tiles); the code axis is "arbitrary" (sequential).

    Blocks tile as (8, 128) in f32 and (16, 128) in bf16: block_n is a multiple of 16 (rows on
    sublanes), block_k a multiple of 128 (codes on lanes of the score tile).
    """
    block_n: int = 256
    block_k: int = 512

    def validate(self) -> "PallasTpuConfig":
        if self.block_n < 16 or self.block_n % 16:
            raise ValueError(f"block_n must be a positive multiple of 16, got {self.block_n}")
        if self.block_k < 128 or self.block_k % 128:
            raise ValueError(f"block_k must be a positive multiple of 128, got {self.block_k}")
        return self


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
