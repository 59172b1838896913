"""Throughput of the U²QT user-tokenizer training step, through the real train loop.

    python scripts/bench_tokenizer.py [--config configs/default.py] [--steps 200] [--batch-sizes 64,128,256]

For each batch size it trains `--steps` steps in a fresh workdir (k-means init early, logging
every 25 steps) and prints a Markdown table: compile time, steady-state users/s (median of the
logged intervals after the first), step time, and the step's temporary memory per device. The
same numbers are written as JSON next to the table (--out).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import sys
import tempfile
import time
from contextlib import redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bench_one(config: str, batch_size: int, steps: int) -> dict:
    import jax
    from u2qt import config as config_lib
    from u2qt.train.loop import run

    cfg = config_lib.load_config_file(config)
    for key, value in {"train.batch_size": batch_size, "train.steps": steps, "train.log_every": 25,
                       "train.eval_every": 10 * steps, "train.checkpoint_every": 10 * steps,
                       "quantizer.kmeans_at_step": 5, "train.progress": False}.items():
        config_lib.apply_override(cfg, key, repr(value))
    with tempfile.TemporaryDirectory() as workdir:
        out = io.StringIO()
        t0 = time.time()
        with redirect_stdout(out):
            run(cfg, workdir)
        wall = time.time() - t0
        rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    text = out.getvalue()
    compile_s = float(re.search(r"train step compiled in ([\d.]+)s", text).group(1))
    temp = re.search(r"temporaries ([\d.]+) MiB", text)
    rates = sorted(r["rows_per_s"] for r in rows if r["split"] == "train" and r["step"] > 25 and r["step"] != steps)
    rate = rates[len(rates) // 2]
    return {"batch_size": batch_size, "devices": len(jax.devices()), "platform": jax.devices()[0].platform,
            "compile_s": compile_s, "rows_per_s": rate, "step_ms": 1000 * batch_size / rate,
            "temp_mib": float(temp.group(1)) if temp else None, "wall_s": wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/default.py")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-sizes", default="64,128,256")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    from u2qt.train.workdir import enable_compilation_cache
    enable_compilation_cache()
    results = [bench_one(args.config, int(b), args.steps) for b in args.batch_sizes.split(",")]
    print(f"U2QT train step, {args.config}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| batch | devices | compile s | users/s | step ms | temp MiB |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['batch_size']} | {r['devices']} {r['platform']} | {r['compile_s']:.1f} | {r['rows_per_s']:.0f} | "
              f"{r['step_ms']:.0f} | {r['temp_mib'] if r['temp_mib'] is not None else '-'} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    from u2qt.errors import cli_exit
    raise SystemExit(cli_exit(main))
