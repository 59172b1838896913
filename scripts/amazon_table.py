"""The Amazon results table: one Markdown row per finished run (its summary.json and config.json).

  python scripts/amazon_table.py runs/beauty_id runs/beauty_unified ... [--out results.md]

Recommender runs: data set, item representation, cold start, the validation-selected step and its
validation NDCG@10, test Recall/NDCG@5/10 (and on cold-start items when the run has them), seed.
Item-tokenizer runs: collision rate ((N − distinct)/N, as the field reports it) of the 3-code ID
before de-duplication (and of the nearest codes, when the last level was made collision-free), the
share of items whose nearest codes another item shares, largest group, uniqueness after
de-duplication, code usage per level.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _load(run: str) -> tuple[dict, dict]:
    with open(os.path.join(run, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    return summary, config


def _dataset(config: dict) -> str:
    return os.path.basename(os.path.normpath(config["data"]["path"]))


def recommender_rows(runs: list[tuple[str, dict, dict]]) -> list[str]:
    head = ("| data | items as | codes | cold items | steps | selected step | valid NDCG@10 | "
            "test R@5 | test R@10 | test N@5 | test N@10 | cold R@10 | cold N@10 | seed | run |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run, s, c in runs:
        t, sel = s["test"], s.get("selected", {})
        codes = "-" if c["model"]["item_repr"] == "id" else ("fixed" if c["model"]["codes_path"] else "learned")
        cold = lambda k: f"{t[k]:.4f}" if k in t else "-"
        lines.append(f"| {_dataset(c)} | {c['model']['item_repr']} | {codes} | {t.get('cold_items', 0)} | "
                     f"{s['steps']} | {sel.get('step', '-')} | {sel.get('value', float('nan')):.4f} | "
                     f"{t['Recall@5']:.4f} | {t['Recall@10']:.4f} | {t['NDCG@5']:.4f} | {t['NDCG@10']:.4f} | "
                     f"{cold('cold_Recall@10')} | {cold('cold_NDCG@10')} | {c['seed']} | {run} |")
    return lines


def tokenizer_rows(runs: list[tuple[str, dict, dict]]) -> list[str]:
    head = ("| data | items | levels x codes | steps | collision rate | nearest-code collision rate | "
            "items sharing nearest codes | largest group | unique after de-dup | "
            "code usage per level | perplexity per level | seed | run |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run, s, c in runs:
        ids, view = s["ids"], s["views"]["item"]
        levels = c["quantizer"]["item_levels"]
        usage = " / ".join(f"{u:.0%}" for u in view["usage"])
        ppl = " / ".join(f"{p:.0f}" for p in view["perplexity"])
        nearest = f"{ids['nearest_collision_rate']:.2%}" if "nearest_collision_rate" in ids else "same"
        sharing = ids.get("nearest_rows_sharing_codes", s.get("rows_sharing_codes"))
        sharing = f"{sharing:.2%}" if sharing is not None else "-"
        lines.append(f"| {_dataset(c)} | {s['rows']} | {levels} x {c['quantizer']['item_codes']} | {s['steps']} | "
                     f"{s['collision_rate']:.2%} | {nearest} | {sharing} | {ids['largest_group']} | "
                     f"{ids['unique_after_dedup']:.0%} | "
                     f"{usage} | {ppl} | {c['seed']} | {run} |")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="workdirs of finished runs")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    rec, tok = [], []
    for run in args.runs:
        if not os.path.exists(os.path.join(run, "summary.json")):
            print(f"skipping {run}: no summary.json (not finished)", file=sys.stderr)
            continue
        s, c = _load(run)
        (tok if c["task"] == "item_tokenizer" else rec).append((run, s, c))
    if not rec and not tok:
        from u2qt.errors import U2qtError
        raise U2qtError(f"no finished run (a workdir with summary.json) among {args.runs}")
    parts = []
    if tok:
        parts += ["Item tokenizer", ""] + tokenizer_rows(tok) + [""]
    if rec:
        parts += ["Recommender (full ranking over all items, leave-one-out, history 20)", ""] + recommender_rows(rec)
    text = "\n".join(parts)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from u2qt.errors import cli_exit
    sys.exit(cli_exit(lambda: main(sys.argv[1:])))
