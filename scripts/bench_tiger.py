"""TIGER on this machine: the train step (time, positions/s, FLOPs and achieved GFLOP/s from XLA's
cost analysis) and constrained beam-search decoding (users/s at each beam, compiled once).

    python scripts/bench_tiger.py [--config configs/tiger.py:beauty] [--steps 5] [--beams 10,20]
                                  [--batch 256] [--set KEY=VALUE ...]

The step is the one the train loop runs (``make_train_step``); decoding is the task's own
(``GenerativeRetrievalTask.decode``, full 20-item window) on the validation cases, and the last
row ranks ``--eval-cases`` validation cases as an evaluation does (length-sorted batches, windows
cut to ``eval.length_buckets``); all at the config's untrained parameters (decoding cost does not
depend on the weights). Prints a Markdown table.
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
    p.add_argument("--config", default="configs/tiger.py:beauty")
    p.add_argument("--steps", type=int, default=5, help="timed train steps (after one to compile)")
    p.add_argument("--beams", default="10,20")
    p.add_argument("--batch", type=int, default=256, help="users per decoding batch")
    p.add_argument("--decode-batches", type=int, default=3, help="timed decoding batches per beam")
    p.add_argument("--eval-cases", type=int, default=1024,
                   help="validation cases ranked as the evaluation does (length-sorted, windows cut)")
    p.add_argument("--set", action="append", default=[], help="a config override KEY=VALUE (repeatable)")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from u2qt import config as config_lib
    from u2qt.tasks.generative import GenerativeRetrievalTask
    from u2qt.train.step import init_state, make_optimizer, make_train_step
    from u2qt.train.workdir import enable_compilation_cache

    enable_compilation_cache()
    cfg = config_lib.load_config_file(args.config)
    for item in args.set:
        key, _, value = item.partition("=")
        config_lib.apply_override(cfg, key, value)
    task = GenerativeRetrievalTask(cfg, cfg.data.get("cache_dir") or "runs/amazon_cache", log=lambda m: None)
    tx = make_optimizer(cfg, task)
    constants = {k: jnp.asarray(v) for k, v in task.constants.items()}
    batch_size = cfg.train.batch_size
    rng = np.random.default_rng(0)
    pick = lambda: {k: jnp.asarray(v[rng.integers(0, len(v), batch_size)]) for k, v in task.examples.items()}
    state = init_state(task, tx, cfg, jax.random.key(0), pick(), constants)
    params = sum(x.size for x in jax.tree.leaves(state["params"]))

    t0 = time.time()
    step = jax.jit(make_train_step(task, tx, cfg)).lower(state, pick(), constants).compile()
    compile_s = time.time() - t0
    cost = step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", float("nan")))
    state, m = step(state, pick(), constants)
    jax.block_until_ready(m)
    batches = [pick() for _ in range(args.steps)]
    t0 = time.time()
    for b in batches:
        state, m = step(state, b, constants)
    jax.block_until_ready(m)
    step_s = (time.time() - t0) / args.steps

    cases = task.valid_cases
    rows = []
    for beams in (int(b) for b in args.beams.split(",")):
        take = lambda i: slice(i * args.batch, (i + 1) * args.batch)
        t0 = time.time()
        jax.block_until_ready(task.decode(state["params"], constants, cases.history[take(0)], cases.users[take(0)],
                                          beams=beams))
        first_s = time.time() - t0
        t0 = time.time()
        for i in range(1, 1 + args.decode_batches):
            out = task.decode(state["params"], constants, cases.history[take(i)], cases.users[take(i)], beams=beams)
        jax.block_until_ready(out)
        rows.append((beams, first_s, args.batch * args.decode_batches / (time.time() - t0)))

    from u2qt.eval.ranking import EvalCases
    subset = EvalCases(users=cases.users[:args.eval_cases], history=cases.history[:args.eval_cases],
                       targets=cases.targets[:args.eval_cases])
    task.ranks(state["params"], constants, subset)  # compiles each bucket's decoder
    t0 = time.time()
    task.ranks(state["params"], constants, subset)
    eval_s = time.time() - t0

    print(f"TIGER, {args.config}{' ' + ' '.join(args.set) if args.set else ''}; {params:,} parameters; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].platform}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| what | batch | compile s | time | throughput | GFLOP | GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| train step | {batch_size} | {compile_s:.1f} | {step_s * 1e3:,.0f} ms | {batch_size / step_s:,.0f} positions/s "
          f"| {flops / 1e9:,.1f} | {flops / 1e9 / step_s:,.1f} |")
    for beams, first_s, users_s in rows:
        print(f"| decode, beam {beams} | {args.batch} | {first_s:.1f} (first batch) | "
              f"{args.batch / users_s * 1e3:,.0f} ms | {users_s:,.0f} users/s | | |")
    print(f"| evaluation: {len(subset):,} validation cases, beam {cfg.eval.beam}, windows cut to "
          f"{tuple(cfg.eval.length_buckets) or 'none'} | {cfg.eval.batch_size} | | {eval_s:,.1f} s | "
          f"{len(subset) / eval_s:,.0f} users/s | | |")
    return 0


if __name__ == "__main__":
    from u2qt.errors import cli_exit
    raise SystemExit(cli_exit(main))
