"""EfficientRec's inference cost against the number of users: per-user time and model bytes at
10k, 100k and 1M synthetic users, for the ID-free model (full and pruned ranking) and for the
same model with a user-ID table.

  python scripts/bench_efficientrec.py                     # the table, and JSON with --json PATH
  python scripts/bench_efficientrec.py --users 10000,100000 --items 5000

Each population gets random histories (--history items per user) over a catalogue of --items;
the time is that of the jitted top-10 function (encode the user, then score every item, or only
the union of the shortlists of the top --top-clusters clusters) on --batches batches of --batch
users drawn at random from the population (the first, compiling call is not timed). The
parameters are untrained: the cost does not depend on their values. Model bytes: everything
inference holds (item table, user encoder, clusters, shortlists; plus the user rows with an ID
table).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from u2qt.models.efficientrec import EfficientRec, Tables  # noqa: E402


def _time(fn, batches) -> float:
    jax.block_until_ready(fn(*batches[0]))
    t0 = time.perf_counter()
    for b in batches[1:]:
        jax.block_until_ready(fn(*b))
    return (time.perf_counter() - t0) / (sum(len(b[0]) for b in batches[1:]))


def bench(users: int, args) -> dict:
    rng = np.random.default_rng(0)
    # The population's histories (left-padded, 1..I); only the sampled users are ever encoded.
    history = rng.integers(1, args.items + 1, (users, args.history), dtype=np.int32)
    values = np.zeros((users, args.history), np.float32)
    out = {"users": users}
    for table in (False, True):
        model = EfficientRec(num_items=args.items, dim=args.dim, max_history=args.history, head_hidden=(args.hidden,),
                             clusters=args.clusters, user_table=table, num_users=users)
        params = model.init(jax.random.key(0))
        tables = Tables(params["item_embedding"], params["item_output"], params.get("user_embedding"))
        shortlists = jnp.asarray(rng.integers(1, args.items + 1, (args.clusters, args.shortlist), dtype=np.int32))
        pick = [rng.integers(0, users, args.batch) for _ in range(args.batches + 1)]
        batches = [(jnp.asarray(history[p]), jnp.asarray(values[p]), jnp.asarray(p.astype(np.int32))) for p in pick]
        full = jax.jit(lambda h, v, u: model.full_top_k(params, tables, h, v, u, k=10))
        name = "id_table" if table else "id_free"
        out[f"{name}_full_us_per_user"] = 1e6 * _time(full, batches)
        if not table:
            pruned = jax.jit(lambda h, v, u: model.pruned_top_k(params, tables, shortlists, h, v, u, k=10,
                                                                 top_m=args.top_clusters))
            out["id_free_pruned_us_per_user"] = 1e6 * _time(pruned, batches)
        out[f"{name}_parameters"] = int(sum(x.size for x in jax.tree.leaves(params)))
        out[f"{name}_model_bytes"] = int(sum(x.nbytes for x in jax.tree.leaves(params)) + shortlists.nbytes)
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", default="10000,100000,1000000")
    p.add_argument("--items", type=int, default=12101)  # Beauty's catalogue
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--clusters", type=int, default=32)
    p.add_argument("--shortlist", type=int, default=200)
    p.add_argument("--top-clusters", type=int, default=3)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    rows = [bench(int(n), args) for n in args.users.split(",")]
    print(f"EfficientRec inference, {args.items:,} items, d {args.dim}, history {args.history}, "
          f"{args.clusters} clusters × {args.shortlist}, top {args.top_clusters}; batch {args.batch}, "
          f"{jax.devices()[0].platform}")
    print("| users | ID-free params | ID-free MiB | ID-free full µs/user | ID-free pruned µs/user | "
          "ID-table params | ID-table MiB | ID-table full µs/user |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['users']:,} | {r['id_free_parameters']:,} | {r['id_free_model_bytes'] / 2**20:.2f} | "
              f"{r['id_free_full_us_per_user']:.1f} | {r['id_free_pruned_us_per_user']:.1f} | "
              f"{r['id_table_parameters']:,} | {r['id_table_model_bytes'] / 2**20:.2f} | "
              f"{r['id_table_full_us_per_user']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
