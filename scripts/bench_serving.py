"""Latency of an exported bundle's functions, loaded as a server would (``u2qt.serving.load``).

    python scripts/bench_serving.py --bundle bundles/X [--batches 1,64,1024] [--calls 50]

For each function and batch size: one call to compile (reported), then ``--calls`` timed calls
(each waited for), p50 / p99 latency and rows/s. Inputs are zeros of the declared shapes and
dtypes (padding: the cost of these functions depends on shapes, not values; a dimension other than
the batch, e.g. text tokens, gets ``--tokens``). Prints Markdown. Two more rows per batch size where
the bundle has them, timed end to end from what a client holds: ``tokenize_users`` (raw user rows →
encoding with the training vocabularies → tokens; rows built from the bundle's spec, 20 events
each) and ``text_codes`` from text (word-piece tokenization on the host + the exported MiniLM).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--batches", default="1,64,1024")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--budget", type=float, default=30.0, help="seconds of timed calls per row at most (≥ 3 calls)")
    p.add_argument("--tokens", type=int, default=64, help="length of a non-batch symbolic dimension (text tokens)")
    args = p.parse_args(argv)

    import jax
    import numpy as np
    from u2qt import serving

    bundle = serving.load(args.bundle)
    print(f"bundle {args.bundle} (task {bundle.manifest['task']}, {bundle.manifest['parameters']:,} parameters); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {jax.default_backend()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print("| function | batch | first call s | p50 ms | p99 ms | rows/s | calls |")
    print("|---|---|---|---|---|---|---|")
    def timed(label, batch, call):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        first = time.perf_counter() - t0
        times = []
        while len(times) < args.calls and (len(times) < 3 or sum(times) < args.budget):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            times.append(time.perf_counter() - t0)
        p50, p99 = np.percentile(times, [50, 99]) * 1e3
        print(f"| {label} | {batch:,} | {first:.2f} | {p50:,.1f} | {p99:,.1f} | {batch / (p50 / 1e3):,.0f} | {len(times)} |",
              flush=True)

    functions = bundle.manifest["functions"]
    for name, spec in functions.items():
        for batch in (int(b) for b in args.batches.split(",")):
            inputs = [np.zeros([batch if d == "batch" else args.tokens if isinstance(d, str) else d for d in s["shape"]],
                               s["dtype"]) for s in spec["inputs"].values()]
            timed(name, batch, lambda: bundle(name, *inputs))
            if name == "tokens" and os.path.exists(bundle.file("dataset_spec.json")):
                rows = raw_users(bundle.file("dataset_spec.json"), batch)
                timed("tokenize_users (raw rows)", batch, lambda: bundle.tokenize_users(rows)[0])
            if name == "text_codes":
                words = "natural lip balm with shea butter and vitamin e for dry lips".split()
                texts = [" ".join(words[(i + k) % len(words)] for k in range(40)) for i in range(batch)]
                timed("text_codes (from text)", batch, lambda: bundle.text_codes(texts))
    return 0


def raw_users(spec_path: str, n: int) -> list[dict]:
    """``n`` users as a client sends them: each field's most frequent value, the mean of each
    number, and 20 events on the catalogue's first items, an hour apart."""
    import json
    spec = json.load(open(spec_path))
    row = {f: v[0] if v else None for f, v in zip(spec["cat_fields"], spec["cat_vocab"])}
    row.update(dict(zip(spec["num_fields"], spec["num_mean"])))
    return [dict(row, user_id=str(i), events=[{"item_id": spec["item_ids"][k % len(spec["item_ids"])],
                                               "timestamp": 1_700_000_000 + 3600 * k, "value": 1.0} for k in range(20)])
            for i in range(n)]


if __name__ == "__main__":
    from u2qt.errors import cli_exit
    raise SystemExit(cli_exit(main))
