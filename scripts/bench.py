"""One benchmark command: the real train step of every main configuration, timed on this machine.

  python scripts/bench.py [--only rqvae,items,u2qt,beauty_id,beauty_unified] [--steps 30] [--json bench.json]
                          [--set key=value ...]   (config overrides applied to every configuration)

For each configuration it builds the task as ``train.py`` does, compiles the loop's own step
(``u2qt.train.step.make_train_step`` with the batch drawn on device, ``u2qt.train.batches``),
and reports, in one Markdown table:
  rows/s          training rows (items, users, sequences) per second, steady state
  step ms         wall time per step over ``--steps`` steps after a warm-up
  host ms         host time per step: how long a call takes to return (dispatch, arguments,
                  Python); batches are drawn on device, so there is no per-step data pipeline,
                  batch check or host→device copy; metrics are fetched every log_every steps
  GFLOP           XLA's cost analysis of the compiled step
  GFLOP/s, % roofline   against a plain f32 matmul timed in the same run (this CPU's roofline)
  compile s       ahead-of-time compilation of the step
Item text embeddings come from the configs' caches (the first run computes them once).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CONFIGS = {
    "rqvae": "amazon.py:beauty,rqvae",
    "items": "amazon.py:beauty,items",
    "u2qt": "default.py",
    "beauty_id": "amazon.py:beauty,id",
    "beauty_unified": "amazon.py:beauty,unified",
}


def matmul_roofline(n: int = 1024, reps: int = 15) -> float:
    """GFLOP/s of a jitted [n, n] @ [n, n] float32 matmul, the fastest of ``reps`` (the roof)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9


def bench_config(name: str, spec: str, steps: int, roofline: float, overrides=()) -> dict:
    import jax

    from u2qt import config as config_lib
    from u2qt.tasks.core import make_task
    from u2qt.train.batches import DeviceBatches, with_device_batches
    from u2qt.train.sharding import Placement
    from u2qt.train.step import init_state, make_optimizer, make_train_step

    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", spec))
    for item in overrides:
        key, _, value = item.partition("=")
        config_lib.apply_override(cfg, key, value)
    cache = cfg.data.cache_dir or os.path.join(REPO, "runs", "bench_cache")
    task = make_task(cfg, cache, log=lambda *_: None)
    placement = Placement(cfg.train.batch_size)
    with jax.set_mesh(placement.mesh):
        constants = placement.replicate({k: jax.numpy.asarray(v) for k, v in task.constants.items()})
        batches = DeviceBatches(task.examples, task.model_keys, cfg.train.batch_size, cfg.seed, placement)
        tx = make_optimizer(cfg, task)
        sample = {k: v[:max(2, len(placement.devices))] for k, v in task.examples.items() if k in task.model_keys}
        state = jax.jit(lambda k: init_state(task, tx, cfg, k, sample, constants))(jax.random.key(cfg.seed))
        state["data"] = batches.initial_state()
        # Past the k-means step: the quantizer and the codebook upkeep are on, as in most of training.
        state["step"] = jax.numpy.asarray(cfg.quantizer.kmeans_at_step if "quantizer" in cfg else 0, jax.numpy.int32)
        step = with_device_batches(make_train_step(task, tx, cfg), batches)
        t0 = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=(0,)).lower(state, batches.arrays, constants).compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", 0.0))
        for _ in range(3):  # warm-up
            state, metrics = compiled(state, batches.arrays, constants)
        jax.block_until_ready(metrics)
        # Throughput as the loop runs: steps queued back to back, metrics fetched every log_every.
        t0 = time.perf_counter()
        for i in range(steps):
            state, metrics = compiled(state, batches.arrays, constants)
            if (i + 1) % cfg.train.log_every == 0:
                jax.device_get(metrics)
        jax.block_until_ready(metrics)
        per_step = (time.perf_counter() - t0) / steps
        # Host time per step: how long the call takes to return with the device idle (dispatch,
        # argument handling, Python); the step's compute runs after the call returns.
        dispatch = []
        for _ in range(min(steps, 10)):
            d0 = time.perf_counter()
            state, metrics = compiled(state, batches.arrays, constants)
            dispatch.append(time.perf_counter() - d0)
            jax.block_until_ready(metrics)
        dispatch = sorted(dispatch)[len(dispatch) // 2] * steps
    gflops = flops / per_step / 1e9
    return {"config": name, "spec": spec, "task": cfg.task, "batch": cfg.train.batch_size,
            "rows_per_s": cfg.train.batch_size / per_step, "step_ms": 1000 * per_step,
            "dispatch_ms": 1000 * dispatch / steps, "gflop_per_step": flops / 1e9, "gflop_per_s": gflops,
            "roofline_pct": 100 * gflops / roofline, "compile_s": compile_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every configuration, e.g. train.target_capacity=0")
    args = p.parse_args(argv)
    import jax

    from u2qt.train.workdir import enable_compilation_cache
    enable_compilation_cache()
    first = matmul_roofline()
    rows = [bench_config(name, CONFIGS[name], args.steps, first, args.set) for name in args.only.split(",")]
    # The roof is measured before and after the configurations; the higher one is used, so that a
    # busy moment during one measurement cannot inflate the percentages.
    roofline = max(first, matmul_roofline())
    for r in rows:
        r["roofline_pct"] = 100 * r["gflop_per_s"] / roofline
    machine = (f"{jax.devices()[0].platform} x{len(jax.devices())}, {os.cpu_count()} cores "
               f"({platform.processor() or platform.machine()})")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# {stamp}, jax {jax.__version__}, {machine}; roofline (f32 1024³ matmul) {roofline:.0f} GFLOP/s; "
          f"{args.steps} timed steps" + (f"; overrides {args.set}" if args.set else ""))
    print("| config | task | batch | rows/s | step ms | host ms | GFLOP/step | GFLOP/s | % roofline | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} (`{r['spec']}`) | {r['task']} | {r['batch']} | {r['rows_per_s']:,.0f} | "
              f"{r['step_ms']:.1f} | {r['dispatch_ms']:.2f} | {r['gflop_per_step']:.2f} | {r['gflop_per_s']:.1f} | "
              f"{r['roofline_pct']:.0f}% | {r['compile_s']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": stamp, "machine": machine, "jax": jax.__version__, "roofline_gflop_s": roofline,
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    from u2qt.errors import cli_exit
    raise SystemExit(cli_exit(main))
