"""u2qt.quant.stats: usage and perplexity of a table of codes."""
from __future__ import annotations

import numpy as np

from u2qt.quant.stats import code_usage

# Per level: how often each of the 4 codes is used (the last level sees no rows at all).
COUNTS = np.array([[2, 2, 0, 0], [1, 1, 1, 1], [7, 0, 0, 0], [0, 0, 0, 0]])


def _codes_with_counts(counts: np.ndarray) -> np.ndarray:
    """One level's codes [N, 1] in which code j appears counts[j] times (N = Σ counts)."""
    return np.repeat(np.arange(len(counts)), counts).reshape(-1, 1)


def test_usage_stats():
    # code_usage takes one table of codes [N, L], so each level's rows (their number differs per
    # level here) are tables of their own.
    usage, perplexity = [], []
    for counts in COUNTS:
        codes = _codes_with_counts(counts)
        np.testing.assert_array_equal(np.bincount(codes[:, 0], minlength=4), counts)
        stats = code_usage(codes, 4)
        assert len(stats["usage"]) == len(stats["perplexity"]) == 1
        usage += stats["usage"]
        perplexity += stats["perplexity"]
    np.testing.assert_allclose(usage, [0.5, 1.0, 0.25, 0.0])
    np.testing.assert_allclose(perplexity, [2.0, 4.0, 1.0, 1.0], rtol=1e-6)
    # Levels of one table are reported in order: the first two levels have 4 rows each.
    both = code_usage(np.concatenate([_codes_with_counts(COUNTS[0]), _codes_with_counts(COUNTS[1])], 1), 4)
    np.testing.assert_allclose(both["usage"], [0.5, 1.0])
    np.testing.assert_allclose(both["perplexity"], [2.0, 4.0], rtol=1e-6)
