"""Statistics of a table of codes (numpy): how many codes each level uses, how evenly, how many
rows collide (``collision_rate``, as the field defines it) or share their code tuple, how well a level separates planted labels, and the size of a token.

Plain functions of the codes, so the run summary, the tests and the scripts use one definition.
"""
from __future__ import annotations

import math

import numpy as np


def code_usage(codes: np.ndarray, num_codes: int) -> dict:
    """Per level of one stack (codes [N, L]): fraction of codes used and perplexity (exp entropy)."""
    usage, perplexity = [], []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=num_codes).astype(np.float64)
        p = counts / max(counts.sum(), 1.0)
        nz = p[p > 0]
        usage.append(float(np.mean(counts > 0)))
        perplexity.append(float(np.exp(-np.sum(nz * np.log(nz)))))
    return {"usage": usage, "perplexity": perplexity}


def collision_rate(codes: np.ndarray) -> float:
    """The collision rate as the field reports it (TIGER, LETTER, RQ-VAE-Recommender):
    (N − distinct code tuples) / N over codes [N, L], the share of rows that would need another ID.
    Two rows on one tuple count once: 1 of 2."""
    if len(codes) == 0:
        return 0.0
    return float(1.0 - len(np.unique(codes, axis=0)) / len(codes))


def rows_sharing_codes(codes: np.ndarray) -> float:
    """Fraction of rows whose full code tuple (codes [N, L]) another row shares: two rows on one
    tuple count twice, so this is up to twice ``collision_rate``."""
    if len(codes) == 0:
        return 0.0
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float(np.mean(counts[inverse.reshape(-1)] > 1))


def purity(codes: np.ndarray, labels: np.ndarray) -> float:
    """Σ_code max_label count / N: how well one code level separates planted labels."""
    total = 0
    for code in np.unique(codes):
        total += np.bincount(labels[codes == code]).max()
    return float(total / len(labels))


def bits_per_code(num_codes: int) -> int:
    return max(1, math.ceil(math.log2(num_codes)))
