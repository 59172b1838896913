"""A tables directory larger than one wants in memory: the whole read against the block-by-block one.

    python scripts/bench_tables_stream.py [--users 300000] [--chunk 50000] [--dir DIR] [--json FILE]

Writes (once) a ``users.csv`` / ``items.csv`` / ``events.csv`` directory of ``--users`` synthetic
users (``synthetic_chunks``; each chunk's events shuffled, so a user's events are spread over the
file's batches), then measures in a child process each (its own peak RSS, ``ru_maxrss``):

  whole    ``read_table_dir``: every table in memory (what ``data.stream_chunk_users=0`` reads);
  blocks   ``TableDirChunks``: the users' ids, then the events sorted into blocks of ``--chunk``
           users on disk, then each block validated (what ``data.stream_chunk_users > 0`` reads);
  build    ``load_streamed``: the blocks encoded into the array_record examples a run trains on.

Prints a Markdown table (wall seconds, peak RSS, the CSV bytes) and, with ``--json``, writes it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def write_dir(path: str, users: int, chunk: int) -> int:
    """The CSV directory of ``users`` synthetic users; returns its bytes."""
    from u2qt.data.synthetic import synthetic_chunks
    if not os.path.exists(os.path.join(path, "done")):
        os.makedirs(path, exist_ok=True)
        for i, (t, _) in enumerate(synthetic_chunks(users, 400, 8, seed=0, chunk_users=chunk)):
            first = i == 0
            t.users.to_csv(os.path.join(path, "users.csv"), mode="w" if first else "a", header=first, index=False)
            t.events.sample(frac=1.0, random_state=i).to_csv(os.path.join(path, "events.csv"), mode="w" if first else "a",
                                                            header=first, index=False)
            if first:
                t.items.to_csv(os.path.join(path, "items.csv"), index=False)
        open(os.path.join(path, "done"), "w").close()
    return sum(os.path.getsize(os.path.join(path, f)) for f in ("users.csv", "items.csv", "events.csv"))


def child(kind: str, path: str, chunk: int, cache: str) -> dict:
    t0 = time.time()
    if kind == "whole":
        from u2qt.data.tables import read_table_dir
        tables, report = read_table_dir(path)
        out = {"users": report.users, "events": report.events}
    elif kind == "blocks":
        from u2qt.data.tables import TableDirChunks
        blocks = TableDirChunks(path, chunk, os.path.join(cache, "scratch"))
        for _ in blocks:
            pass
        out = {"users": blocks.report.users, "events": blocks.report.events}
    else:
        from u2qt import defaults
        from u2qt.data.load import load_streamed
        cfg = defaults.user_tokenizer().data
        cfg.format, cfg.path, cfg.stream_chunk_users = "tables", path, chunk
        data = load_streamed(cfg, cache, log=lambda m: None)
        out = {"users": data.examples.rows, "events": None}
    out["seconds"] = time.time() - t0
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=300_000)
    p.add_argument("--chunk", type=int, default=50_000)
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "u2qt_bench_tables"))
    p.add_argument("--json", default="")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        kind, path, chunk, cache = a.child
        print(json.dumps(child(kind, path, int(chunk), cache)))
        return 0
    path = os.path.join(a.dir, f"users{a.users}")
    t0 = time.time()
    size = write_dir(path, a.users, a.chunk)
    print(f"data: {path} ({size / 2**20:,.0f} MiB of CSV; written or found in {time.time() - t0:.0f}s)", flush=True)
    rows = []
    for kind in ("whole", "blocks", "build"):
        cache = tempfile.mkdtemp(dir=a.dir)
        done = subprocess.run([sys.executable, __file__, "--child", kind, path, str(a.chunk), cache],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(dict(r, kind=kind))
        print(f"{kind}: {r['seconds']:.0f}s, peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    print(f"\n| read ({a.users:,} users, {size / 2**20:,.0f} MiB of CSV) | events kept | wall s | peak RSS |")
    print("| --- | --- | --- | --- |")
    what = {"whole": "whole (`read_table_dir`)", "blocks": f"blocks of {a.chunk:,} users (`TableDirChunks`)",
            "build": "blocks → array_record examples (`load_streamed`)"}
    for r in rows:
        ev = f"{r['events']:,}" if r["events"] is not None else "-"
        print(f"| {what[r['kind']]} | {ev} | {r['seconds']:.0f} | {r['peak_rss_bytes'] / 2**30:.2f} GiB |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"users": a.users, "chunk": a.chunk, "csv_bytes": size, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
