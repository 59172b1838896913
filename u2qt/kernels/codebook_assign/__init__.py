"""Nearest-code assignment for codebooks: plain-jnp reference, chunked XLA, Pallas GPU/TPU kernels.

        index, distance = assign(x, codebook, metric="l2", implementation=None)
        indices, distances = assign_residual(x, codebooks, implementation=None)

See README.md in this folder.
"""
from u2qt.kernels.codebook_assign.api import IMPLEMENTATIONS, assign, assign_residual, choose

__all__ = ["IMPLEMENTATIONS", "assign", "assign_residual", "choose"]
