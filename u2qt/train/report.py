"""What a run tells its user at the end: the printed summary and ``training.png``."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from u2qt import files


def _number(v) -> str:
    """Counts as integers, rates and scores with 4 decimals."""
    return f"{int(v):,}" if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1 else f"{v:.4f}"


def summary_text(summary: dict, workdir: str, row_kind: str = "user") -> str:
    lines = [f"done in {summary['wall_seconds']:.0f}s; outputs in {workdir}"]
    if "selected" in summary:
        lines.append(f"  selected the step-{summary['selected']['step']} parameters by "
                     f"{summary['selected']['metric']} = {summary['selected']['value']:.4f}")
    if "test" in summary:
        lines.append("  test: " + ", ".join(f"{k} {_number(v)}" for k, v in summary["test"].items()
                                            if isinstance(v, (int, float))))
    for w in summary.get("data_warnings", ()):
        lines.append(f"  data warning: {w}")
    if "views" not in summary:
        return "\n".join(lines)
    lines.append(f"  {summary['rows']:,} {row_kind}s tokenized")
    for view, s in summary["views"].items():
        usage = " ".join(f"{u:.0%}" for u in s["usage"])
        ppl = " ".join(f"{p:.0f}" for p in s["perplexity"])
        lines.append(f"  {view:>9}: code usage per level {usage}; perplexity {ppl}; "
                     f"relative quantization error {s['relative_quantization_error']:.3f}")
    ids = summary.get("ids", {})
    which = (f"exported {summary['primary_view']} IDs" if "nearest_collision_rate" in ids
             else f"{summary['primary_view']} codes, nearest (no collision-free step)")
    lines.append(f"  collision rate ({which}), (N - distinct)/N: {summary['collision_rate']:.2%}; "
                 f"{row_kind}s sharing their codes with another: {summary['rows_sharing_codes']:.2%}")
    if "nearest_collision_rate" in ids:
        lines.append(f"  before the collision-free last level (nearest codes): collision rate "
                     f"{ids['nearest_collision_rate']:.2%}, {row_kind}s sharing {ids['nearest_rows_sharing_codes']:.2%}; "
                     f"{ids['moved_to_a_free_code']:.2%} of {row_kind}s moved to a free code")
    lines.append(f"  size: {summary['bytes_per_row_tokens']:.1f} bytes/{row_kind} as tokens vs "
                 f"{summary['bytes_per_row_float32']} bytes as the float32 representation they quantize "
                 f"({summary['compression_x']:.0f}x smaller)")
    if "purity_first_code" in summary:
        lines.append(f"  purity of the first {summary['primary_view']} code w.r.t. planted types: "
                     f"{summary['purity_first_code']:.3f}")
    return "\n".join(lines)


def plot_run(path: str, metrics_jsonl: str, codes_by_view: dict[str, np.ndarray], num_codes: dict[str, int],
             title: str = "") -> None:
    """Training curves, the primary view's code usage and collision rate at each evaluation, and
    each level's final code-usage histogram in one PNG titled with the run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_jsonl)] if os.path.exists(metrics_jsonl) else []
    train = [r for r in rows if r.get("split") == "train"]
    evals = [r for r in rows if r.get("split") == "eval"]
    first = next(iter(codes_by_view))
    levels = [(v, l) for v, c in codes_by_view.items() for l in range(c.shape[1])]
    ncols = 4
    nrows = 1 + math.ceil(len(levels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    panels = (("training loss", train, ["loss"]),
              ("loss terms", train, ["l_sem", "l_cf", "l_align", "rec", "recon", "quant"]),
              ("quantization error per view", train, [k for k in (train[0] if train else {}) if k.startswith("qerr_")]),
              (f"at each evaluation: {first} codes", evals,
               [f"usage_{first}_{l}" for l in range(codes_by_view[first].shape[1])] + [f"collision_rate_{first}"]))
    for ax, (name, source, keys) in zip(axes[0], panels):
        for k in keys:
            xs = [r["step"] for r in source if k in r]
            if xs:
                ax.plot(xs, [r[k] for r in source if k in r], label=k, marker="o" if source is evals else None,
                        markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for i, (view, level) in enumerate(levels):
        ax = axes[1 + i // ncols][i % ncols]
        counts = np.bincount(codes_by_view[view][:, level], minlength=num_codes[view])
        ax.bar(np.arange(len(counts)), np.sort(counts)[::-1], width=1.0)
        ax.set_title(f"{view} level {level}: {np.mean(counts > 0):.0%} of codes used", fontsize=9)
        ax.set_xlabel("codes, by usage")
        ax.set_ylabel("rows per code")
    for j in range(len(levels), (nrows - 1) * ncols):
        axes[1 + j // ncols][j % ncols].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    files.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
