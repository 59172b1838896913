"""Benchmark: item-tokenizer training throughput (items/s) and recommender step time, per variant.

  python scripts/bench_amazon.py [--data beauty] [--steps 20] [--json out.json] [--set key=value ...]

Times the train step the loop runs (``u2qt.train.step.make_train_step``: loss + gradient + AdamW
+ codebook upkeep, jitted, quantizer on) on random training batches of the configs in
configs/amazon.py, after one warm-up step that compiles; prints a Markdown table. Text embeddings come from the config's cache (computed once).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def time_variant(variant: str, steps: int, overrides=()) -> dict:
    import jax
    import numpy as np

    from u2qt import config as config_lib
    from u2qt.tasks.core import make_task
    from u2qt.train.step import init_state, make_optimizer, make_train_step

    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "amazon.py") + ":" + variant)
    for item in overrides:  # e.g. train.target_capacity=0 (score all B · T positions)
        config_lib.apply_override(cfg, *item.split("=", 1))
    task = make_task(cfg, cfg.data.cache_dir, log=lambda *_: None)
    rng = np.random.default_rng(0)
    n = len(next(iter(task.examples.values())))
    batches = [{k: jax.numpy.asarray(v[idx]) for k, v in task.examples.items() if k in task.model_keys}
               for idx in (rng.integers(0, n, cfg.train.batch_size) for _ in range(steps + 1))]
    constants = {k: jax.numpy.asarray(v) for k, v in task.constants.items()}
    tx = make_optimizer(cfg, task)
    # The loop's own step, past the k-means step so the quantizer and codebook upkeep are on.
    state = init_state(task, tx, cfg, jax.random.key(0), batches[0], constants)
    state["step"] = jax.numpy.asarray(cfg.quantizer.kmeans_at_step, jax.numpy.int32)
    step = jax.jit(make_train_step(task, tx, cfg), donate_argnums=(0,))

    t0 = time.perf_counter()
    state, metrics = step(state, batches[0], constants)
    metrics["loss"].block_until_ready()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        state, metrics = step(state, batches[i], constants)
    metrics["loss"].block_until_ready()
    per_step = (time.perf_counter() - t0) / steps
    rows = len(task.data.item_ids)
    return {"variant": variant, "task": cfg.task, "batch": cfg.train.batch_size, "items": rows,
            "step_ms": 1000 * per_step, "rows_per_s": cfg.train.batch_size / per_step, "first_step_s": compile_s}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="beauty", choices=("beauty", "office"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--variants", default="items,id,semantic,unified")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every variant, e.g. train.target_capacity=0")
    args = parser.parse_args(argv)
    import jax
    rows = [time_variant(f"{args.data},{v}", args.steps, args.set) for v in args.variants.split(",")]
    device = f"{jax.devices()[0].platform} x{len(jax.devices())} ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, jax {jax.__version__}, {device}, "
          f"{args.steps} timed steps" + "".join(f", {s}" for s in args.set))
    print("| config | task | batch | items | step (ms) | rows/s (items/s for the tokenizer) | first step incl. compile (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| amazon.py:{r['variant']} | {r['task']} | {r['batch']} | {r['items']} | {r['step_ms']:.1f} | "
              f"{r['rows_per_s']:.0f} | {r['first_step_s']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "jax": jax.__version__, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
