"""Latency of an exported bundle's functions, loaded as a server would (``u2qt.serving.load``).

    python scripts/bench_serving.py --bundle bundles/X [--batches 1,64,1024] [--calls 50]

For each function and batch size: one call to compile (reported), then ``--calls`` timed calls
(each waited for), p50 / p99 latency and rows/s. Inputs are zeros of the declared shapes and
dtypes (padding: the cost of these functions depends on shapes, not values). Prints Markdown.
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
    args = p.parse_args(argv)

    import jax
    import numpy as np
    from u2qt import serving

    bundle = serving.load(args.bundle)
    print(f"bundle {args.bundle} (task {bundle.manifest['task']}, {bundle.manifest['parameters']:,} parameters); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {jax.default_backend()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print("| function | batch | first call s | p50 ms | p99 ms | rows/s |")
    print("|---|---|---|---|---|---|")
    for name, spec in bundle.manifest["functions"].items():
        for batch in (int(b) for b in args.batches.split(",")):
            inputs = [np.zeros([batch if d == "batch" else d for d in s["shape"]], s["dtype"])
                      for s in spec["inputs"].values()]
            t0 = time.perf_counter()
            jax.block_until_ready(bundle(name, *inputs))
            first = time.perf_counter() - t0
            times = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                jax.block_until_ready(bundle(name, *inputs))
                times.append(time.perf_counter() - t0)
            p50, p99 = np.percentile(times, [50, 99]) * 1e3
            print(f"| {name} | {batch:,} | {first:.2f} | {p50:,.1f} | {p99:,.1f} | {batch / (p50 / 1e3):,.0f} |")
    return 0


if __name__ == "__main__":
    from u2qt.errors import cli_exit
    raise SystemExit(cli_exit(main))
