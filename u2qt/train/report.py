"""What a run writes at the end: the token table, the codebooks, a summary and a picture.

The statistics are plain numpy functions of the codes, so tests and the evaluation scripts use
the same definitions as the summary.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np


def code_usage(codes: np.ndarray, num_codes: int) -> dict:
    """Per level of one stack (codes [U, L]): fraction of codes used and perplexity."""
    usage, perplexity = [], []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=num_codes).astype(np.float64)
        p = counts / max(counts.sum(), 1.0)
        nz = p[p > 0]
        usage.append(float(np.mean(counts > 0)))
        perplexity.append(float(np.exp(-np.sum(nz * np.log(nz)))))
    return {"usage": usage, "perplexity": perplexity}


def collision_rate(codes: np.ndarray) -> float:
    """Fraction of users whose full code tuple (codes [U, L]) is shared with another user."""
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


def summarize(codes_by_view: dict[str, np.ndarray], num_codes: dict[str, int], continuous_dim: int,
              relative_errors: dict[str, float], user_types: np.ndarray | None = None) -> dict:
    """The end-of-run numbers. The first view is the primary one (U²QT: the shared stack):
    its collision rate and the purity of its first code w.r.t. planted labels are reported."""
    views = {}
    token_bits = 0
    for view, codes in codes_by_view.items():
        stats = code_usage(codes, num_codes[view])
        stats["relative_quantization_error"] = relative_errors[view]
        views[view] = stats
        token_bits += codes.shape[1] * bits_per_code(num_codes[view])
    summary = {
        "rows": int(len(next(iter(codes_by_view.values())))),  # users or items, one token row each
        "views": views,
        "primary_view": next(iter(codes_by_view)),
        "collision_rate": collision_rate(next(iter(codes_by_view.values()))),
        "collision_rate_all_views": collision_rate(np.concatenate(list(codes_by_view.values()), 1)),
        "bytes_per_user_tokens": token_bits / 8,
        "bytes_per_user_float32": continuous_dim * 4,
    }
    summary["compression_x"] = summary["bytes_per_user_float32"] / summary["bytes_per_user_tokens"]
    if user_types is not None:
        summary["purity_first_code"] = purity(next(iter(codes_by_view.values()))[:, 0], user_types)
    return summary


def write_token_table(path: str, user_ids: list[str], codes_by_view: dict[str, np.ndarray]) -> None:
    import pandas as pd
    columns = {"user_id": pd.Series(user_ids, dtype=str)}
    for view, codes in codes_by_view.items():
        for level in range(codes.shape[1]):
            columns[f"{view}_{level}"] = codes[:, level].astype(np.int32)
    tmp = path + ".tmp"
    pd.DataFrame(columns).to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def plot_run(path: str, metrics_jsonl: str, codes_by_view: dict[str, np.ndarray], num_codes: dict[str, int]) -> None:
    """Training curves and each level's code-usage histogram in one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_jsonl)] if os.path.exists(metrics_jsonl) else []
    train = [r for r in rows if r.get("split") == "train"]
    levels = [(v, l) for v, c in codes_by_view.items() for l in range(c.shape[1])]
    ncols = 4
    nrows = 1 + math.ceil(len(levels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    for ax, keys in zip(axes[0], (["loss"], ["l_sem", "l_cf", "l_align"], [k for k in (train[0] if train else {}) if k.startswith("qerr_")], ["rows_per_s"])):
        for k in keys:
            xs = [r["step"] for r in train if k in r]
            ax.plot(xs, [r[k] for r in train if k in r], label=k)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for i, (view, level) in enumerate(levels):
        ax = axes[1 + i // ncols][i % ncols]
        counts = np.bincount(codes_by_view[view][:, level], minlength=num_codes[view])
        ax.bar(np.arange(len(counts)), np.sort(counts)[::-1], width=1.0)
        ax.set_title(f"{view} level {level}: {np.mean(counts > 0):.0%} of codes used", fontsize=9)
        ax.set_xlabel("codes, by usage")
    for j in range(len(levels), (nrows - 1) * ncols):
        axes[1 + j // ncols][j % ncols].axis("off")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=80)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
