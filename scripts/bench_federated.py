"""Clients per second of the federated trainer's round (u2qt/train/federated.py) on this machine:
MRFF (or FedAvg SASRec) on synthetic users, every client in the round, at 1k and 10k simulated
clients. Prints a table and writes JSON.

    python scripts/bench_federated.py                      # 1,000 and 10,000 clients
    python scripts/bench_federated.py --clients 1000 --rounds 3 --variant sasrec --json out.json

Synthetic data: each user walks a block of 10 items (out of --items) for --length items, in the
LC-Rec layout, written to a temporary directory; one training row per user (history 20). The
first round compiles and is not timed; the rest are, each to completion.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from u2qt import config as config_lib  # noqa: E402
from u2qt.tasks.federated import FederatedRecTask  # noqa: E402
from u2qt.train import federated as fed  # noqa: E402
from u2qt.train.sharding import Placement  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_users(root: str, users: int, items: int, length: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    blocks = items // 10
    kinds, starts = rng.integers(0, blocks, users), rng.integers(0, 10, users)
    inter = {f"u{u}": [str(k * 10 + (s + j) % 10) for j in range(length)] for u, (k, s) in enumerate(zip(kinds, starts))}
    json.dump(inter, open(os.path.join(root, "Bench.inter.json"), "w"))
    json.dump({str(i): {"title": f"item {i}"} for i in range(items)}, open(os.path.join(root, "Bench.item.json"), "w"))
    return root


def bench(clients: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_lib.load_config_file(os.path.join(ROOT, "configs", "federated.py") + ":beauty," + args.variant)
        for key, value in {"data.path": write_users(tmp, clients, args.items, args.length), "data.max_history": 20,
                           "model.dim": args.dim, "federated.client_fraction": 1.0,
                           "federated.local_steps": args.local_steps,
                           "federated.clients_per_chunk": args.chunk, "federated.rounds": args.rounds}.items():
            config_lib.apply_override(cfg, key, value if isinstance(value, str) else repr(value))
        cfg.train.steps = cfg.federated.rounds * cfg.federated.local_steps
        task = FederatedRecTask(cfg, os.path.join(tmp, "cache"), log=lambda m: None)
        data, weights = task.client_data()
        tx = fed.client_optimizer(cfg, task)
        sample = {k: np.asarray(v[:1]) for k, v in task.examples.items() if k in task.model_keys}
        server, store, part = fed.initial_federation(task, tx, cfg, sample, task.constants, task.num_clients + 1)
        active = np.flatnonzero(weights > 0).astype(np.int32)
        C = len(active)
        chunk = min(args.chunk, C)
        sizes = {"clients_per_round": C, "chunk": chunk, "rows": data["inputs"].shape[1]}
        round_fn = jax.jit(fed.make_round(task, tx, cfg, part, Placement(chunk), sizes), donate_argnums=(0, 1))
        consts = {k: jnp.asarray(v) for k, v in task.constants.items()}
        data, weights, active = ({k: jnp.asarray(v) for k, v in data.items()}, jnp.asarray(weights), jnp.asarray(active))
        t0 = time.perf_counter()
        server, store, m = round_fn(server, store, data, weights, active, consts)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.rounds - 1):
            t0 = time.perf_counter()
            server, store, m = round_fn(server, store, data, weights, active, consts)
            jax.block_until_ready((server, store, m))
            times.append(time.perf_counter() - t0)
        down, up = fed.message_bytes(part, server["leaves"], task.num_experts, dp=False)
        round_s = float(np.median(times))
        return {"clients": clients, "clients_per_round": C, "chunk": chunk, "variant": args.variant,
                "local_steps": args.local_steps, "first_round_s": compile_s, "round_s": round_s,
                "clients_per_s": C / round_s, "local_steps_per_s": C * args.local_steps / round_s,
                "bytes_down_per_round": down * C, "bytes_up_per_round": up * C,
                "store_mib": sum(x.nbytes for x in jax.tree.leaves(store)) / 2**20,
                "loss": float(m["loss"])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--variant", default="mrff", choices=("mrff", "fedavg"))
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--length", type=int, default=12, help="items per synthetic user")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--local_steps", type=int, default=2)
    p.add_argument("--chunk", type=int, default=256, help="clients under vmap at once")
    p.add_argument("--rounds", type=int, default=3, help="rounds run (the first, which compiles, is not timed)")
    p.add_argument("--json", default="", help="also write the rows here")
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be >= 2 (the first compiles)")
    rows = [bench(n, args) for n in args.clients]
    print(f"{jax.devices()[0].platform} x{len(jax.devices())}, {os.cpu_count()} CPU cores; {args.variant}, dim {args.dim}, "
          f"{args.items} items, {args.local_steps} local steps, {args.chunk} clients per vmap chunk")
    print(f"{'clients':>8} {'round s':>9} {'clients/s':>10} {'steps/s':>9} {'MB down':>9} {'MB up':>9} {'store MiB':>10} {'1st round s':>12}")
    for r in rows:
        print(f"{r['clients']:>8,} {r['round_s']:>9.2f} {r['clients_per_s']:>10,.1f} {r['local_steps_per_s']:>9,.1f} "
              f"{r['bytes_down_per_round'] / 1e6:>9.1f} {r['bytes_up_per_round'] / 1e6:>9.1f} {r['store_mib']:>10.1f} "
              f"{r['first_round_s']:>12.1f}")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)
    return rows


if __name__ == "__main__":
    main()
