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
        unit = "round" if "rounds" in summary else "step"  # the federated trainer counts rounds
        lines.append(f"  selected the {unit}-{summary['selected']['step']} parameters by "
                     f"{summary['selected']['metric']} = {summary['selected']['value']:.4f}")
    if "test" in summary:
        lines.append("  test: " + ", ".join(f"{k} {_number(v)}" for k, v in summary["test"].items()
                                            if isinstance(v, (int, float))))
        buckets = summary["test"].get("popularity_buckets")
        if buckets:
            lines.append("  test by target popularity (head → tail, equal shares of training interactions): "
                         + "; ".join(f"{metric} " + " / ".join(f"{b[metric]:.4f}" for b in buckets)
                                     for metric in ("Recall@10", "NDCG@10"))
                         + " (" + " / ".join(f"{b['cases']:,}" for b in buckets) + " cases)")
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
    size = (f"  size: {summary['bytes_per_row_tokens']:.1f} bytes/{row_kind} as tokens vs "
            f"{summary['bytes_per_row_float32']:,} bytes as the float32 representation they quantize "
            f"({summary['compression_x']:.0f}x smaller)")
    if "bytes_per_row_input_float32" in summary:
        size += (f" and {summary['bytes_per_row_input_float32']:,} bytes as the float32 input embedding "
                 f"({summary['compression_x_input']:.0f}x smaller)")
    lines.append(size)
    if "purity_first_code" in summary:
        lines.append(f"  purity of the first {summary['primary_view']} code w.r.t. planted types: "
                     f"{summary['purity_first_code']:.3f}")
    return "\n".join(lines)


def _curves(ax, rows: list[dict], keys: list[str], name: str, markers: bool = False, x_label: str = "step") -> None:
    for k in keys:
        xs = [r["step"] for r in rows if k in r]
        if xs:
            ax.plot(xs, [r[k] for r in rows if k in r], label=k, marker="o" if markers else None, markersize=3)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel(x_label)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _by_popularity(ax, buckets: list[dict]) -> None:
    """Test Recall/NDCG@10 per popularity bucket (head → tail), with each bucket's case count."""
    n = len(buckets)
    names = ["head" if i == 0 else "tail" if i == n - 1 else f"mid {i}" for i in range(n)]
    x = np.arange(n)
    for offset, metric in ((-0.2, "Recall@10"), (0.2, "NDCG@10")):
        ax.bar(x + offset, [b.get(metric, float("nan")) for b in buckets], width=0.4, label=metric)
    ax.set_xticks(x, [f"{name}\n{b.get('cases', 0):,} cases" for name, b in zip(names, buckets)], fontsize=7)
    ax.set_title("test, by target popularity", fontsize=9)
    ax.set_xlabel("buckets with equal shares of the training interactions", fontsize=7)
    ax.legend(fontsize=7)


def plot_run(path: str, metrics_jsonl: str, title: str = "", codes_by_view: dict[str, np.ndarray] | None = None,
             num_codes: dict[str, int] | None = None, test: dict | None = None,
             selected: dict | None = None, x_label: str = "step", loss_title: str = "training loss") -> list[str]:
    """Every run's ``training.png``, titled with the run: training loss and loss terms; for a
    tokenizer (``codes_by_view``) the quantization error, code usage and collision rate at each
    evaluation and each level's final code-usage histogram; for a task that evaluates, the
    validation metrics over training (the selected step marked) and the test metrics by target
    popularity (``test["popularity_buckets"]``). ``x_label`` names the unit of the rows' "step" (a
    federated run logs rounds). Returns the panel titles, in order."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_jsonl)] if os.path.exists(metrics_jsonl) else []
    train = [r for r in rows if r.get("split") == "train"]
    evals = [r for r in rows if r.get("split") == "eval"]
    first_row = train[0] if train else {}
    terms = [k for k in ("l_sem", "l_cf", "l_align", "rec", "recon", "quant") if k in first_row]
    panels = [lambda ax: _curves(ax, train, ["loss"], loss_title, x_label=x_label)]
    if len(terms) > 1:  # one term is the loss itself
        panels.append(lambda ax: _curves(ax, train, terms, "loss terms", x_label=x_label))
    valid = sorted({k for r in evals for k in r if k.startswith("valid_")})
    if valid:
        def validation(ax):
            _curves(ax, evals, valid, "validation metrics at each evaluation", markers=True, x_label=x_label)
            if selected:
                ax.axvline(selected["step"], color="grey", linestyle="--", linewidth=1)
                ax.annotate(f"selected: {x_label} {selected['step']}", (selected["step"], ax.get_ylim()[1]),
                            fontsize=7, ha="right", va="top")
        panels.append(validation)
    if test and test.get("popularity_buckets"):
        panels.append(lambda ax: _by_popularity(ax, test["popularity_buckets"]))
    levels = []
    if codes_by_view:
        first = next(iter(codes_by_view))
        levels = [(v, l) for v, c in codes_by_view.items() for l in range(c.shape[1])]
        panels.append(lambda ax: _curves(ax, train, [k for k in first_row if k.startswith("qerr_")],
                                         "quantization error per view"))
        panels.append(lambda ax: _curves(
            ax, evals, [f"usage_{first}_{l}" for l in range(codes_by_view[first].shape[1])]
            + [f"collision_rate_{first}"], f"at each evaluation: {first} codes", markers=True))

    ncols = 4
    nrows = math.ceil(len(panels) / ncols) + math.ceil(len(levels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    cells = [ax for row in axes for ax in row]
    for ax, draw in zip(cells, panels):
        draw(ax)
    histograms = cells[math.ceil(len(panels) / ncols) * ncols:]
    for ax, (view, level) in zip(histograms, levels):
        counts = np.bincount(codes_by_view[view][:, level], minlength=num_codes[view])
        ax.bar(np.arange(len(counts)), np.sort(counts)[::-1], width=1.0)
        ax.set_title(f"{view} level {level}: {np.mean(counts > 0):.0%} of codes used", fontsize=9)
        ax.set_xlabel("codes, by usage")
        ax.set_ylabel("rows per code")
    for ax in cells[len(panels):math.ceil(len(panels) / ncols) * ncols] + histograms[len(levels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    files.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    titles = [ax.get_title() for ax in cells if ax.axison]
    plt.close(fig)
    return titles
