"""Fingerprints of reference runs, to show that a change keeps every result (or to show what moved).

  python scripts/same_results.py --out before.json              # on the old code
  python scripts/same_results.py --out after.json --against before.json

Runs, each through `python train.py` in a fresh workdir under --runs:
  default     the README's main job (configs/default.py): purity, code usage, collision numbers
  movielens   configs/movielens.py:runlocal: a hash of the exported user tokens
  office_id / office_unified   configs/amazon.py:office,{id,unified},runlocal: test metrics
  office_items                 configs/amazon.py:office,items,runlocal: the item IDs and their collisions
and records the numbers of each run's summary.json plus a hash of every token table it wrote.
With --against, prints each run's numbers side by side and exits 1 if any differs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {
    "default": ["--config", "configs/default.py"],
    "movielens": ["--config", "configs/movielens.py:runlocal"],
    "office_id": ["--config", "configs/amazon.py:office,id,runlocal"],
    "office_unified": ["--config", "configs/amazon.py:office,unified,runlocal"],
    "office_items": ["--config", "configs/amazon.py:office,items,runlocal"],
}
TABLES = ("user_tokens.parquet", "item_codes.parquet", "semantic_ids.parquet")
# Summary keys renamed by the restructure (2026-11-30): old name → new name, so earlier files compare.
RENAMED = {"bytes_per_user_tokens": "bytes_per_row_tokens", "bytes_per_user_float32": "bytes_per_row_float32",
           "test.collision_rate": "collision_rate", "test.largest_group": "ids.largest_group",
           "test.distinct_ids": "ids.distinct_ids", "test.unique_after_dedup": "ids.unique_after_dedup",
           "test.max_dedup_token": "ids.max_dedup_token", "test.nearest_collision_rate": "ids.nearest_collision_rate",
           "test.moved_to_a_free_code": "ids.moved_to_a_free_code"}
# Until 2026-12-01 "collision_rate" meant the share of rows sharing their codes; since then it is
# (N − distinct)/N and the old number is "rows_sharing_codes". Files of format 1 (no "format" key)
# are read with the old meaning, so the two are never compared with each other.
FORMAT = 2
OLD_COLLISION_MEANING = {"collision_rate": "rows_sharing_codes",
                         "ids.nearest_collision_rate": "ids.nearest_rows_sharing_codes"}


def _numbers(tree, prefix=""):
    """Every number of a summary, flattened to dotted keys (wall time left out)."""
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.update(_numbers(v, f"{prefix}{i}."))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        key = RENAMED.get(prefix[:-1], prefix[:-1])
        if not key.endswith("wall_seconds"):
            out[key] = tree
    return out


def _table_hash(path: str) -> str:
    import pandas as pd
    frame = pd.read_parquet(path)
    codes = frame[[c for c in frame.columns if c not in ("user_id", "item_id", "id", "item_index", "dedup")]]
    return hashlib.sha1(np.ascontiguousarray(codes.to_numpy(np.int64)).tobytes()).hexdigest()[:16]


def fingerprint(name: str, args: list[str], runs: str, reuse: bool = False) -> dict:
    workdir = os.path.join(runs, name)
    if not (reuse and os.path.exists(os.path.join(workdir, "summary.json"))):
        shutil.rmtree(workdir, ignore_errors=True)
        subprocess.run([sys.executable, "train.py", *args, "--workdir", workdir, "--config.train.progress=False"],
                       cwd=REPO, check=True)
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    out = {"numbers": _numbers(summary), "wall_s": summary["wall_seconds"], "tables": {}}
    for table in TABLES:
        if os.path.exists(os.path.join(workdir, table)):
            out["tables"]["codes"] = _table_hash(os.path.join(workdir, table))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--runs", default=os.path.join(REPO, "runs", "same_results"))
    p.add_argument("--only", default=",".join(RUNS), help="comma-separated subset of " + ",".join(RUNS))
    p.add_argument("--against", help="an earlier --out file to compare with")
    p.add_argument("--reuse", action="store_true", help="fingerprint finished runs in --runs instead of training")
    args = p.parse_args(argv)
    results = {name: fingerprint(name, RUNS[name], args.runs, args.reuse) for name in args.only.split(",")}
    with open(args.out, "w") as f:
        json.dump({"format": FORMAT, **results}, f, indent=2, sort_keys=True)
    if not args.against:
        return 0
    differ, lines = compare(json.load(open(args.against)), results, args.against)
    print("\n".join(lines))
    return 1 if differ else 0


def compare(before: dict, results: dict, name_of_before: str = "before") -> tuple[bool, list[str]]:
    """(whether any number or token table differs, the lines saying what) between two --out files."""
    before = dict(before)
    old_meaning = OLD_COLLISION_MEANING if before.pop("format", 1) < 2 else {}
    results = {k: v for k, v in results.items() if k != "format"}
    differ, lines = False, []
    for name, now in results.items():
        old = before.get(name)
        if old is None:
            lines.append(f"{name}: not in {name_of_before}")
            continue
        was = {old_meaning.get(RENAMED.get(k, k), RENAMED.get(k, k)): v for k, v in old["numbers"].items()}
        for key in sorted(set(was) | set(now["numbers"])):
            a, b = was.get(key), now["numbers"].get(key)
            if a is None:
                lines.append(f"{name}: {key}: new number {b}")
            elif a != b:
                differ = True
                lines.append(f"{name}: {key}: {a} -> {b}")
        if old["tables"] != now["tables"]:
            differ = True
            lines.append(f"{name}: token tables {old['tables']} -> {now['tables']}")
        lines.append(f"{name}: {len(set(was) & set(now['numbers']))} numbers compared, wall {old['wall_s']:.0f}s -> "
                     f"{now['wall_s']:.0f}s")
    lines.append("DIFFERENT" if differ else "SAME")
    return differ, lines


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from u2qt.errors import cli_exit
    raise SystemExit(cli_exit(main))
