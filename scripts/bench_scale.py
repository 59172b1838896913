"""Scale: the user tokenizer on millions of streamed synthetic users, the recommender at 1 M items.

    python scripts/bench_scale.py [--users 1000000,10000000] [--steps 300] [--items 1000000]
                                  [--export-users 1000000] [--cache DIR] [--json FILE]

User tokenizer (``configs/default.py`` sizes, ``data.stream_chunk_users=100000``): each size runs
``train.py``'s loop in a child process: the examples are built chunk by chunk into array_record
files under ``--cache`` (once: a later run reads them) and ``--steps`` steps train on them through
grain. Reported: build time and users/s, training rows/s (the mean of the logged rates after the
k-means step), the child's peak RSS (``ru_maxrss``) against the examples' bytes on disk, and the
train step's FLOPs (XLA ``cost_analysis``). The run stops after its last step like a killed run
(``train.halt_after_step``): encoding every user for the end-of-run evaluation and the semantic-ID
table is measured separately, on ``--export-users`` users, as seconds and users/s.

Recommender: the SASRec step over item IDs (``model.item_repr=id``: an [I + 1, d] embedding table
that also scores the full softmax over all I items) on synthetic sequences of Zipf-distributed
items: step time, rows/s, FLOPs, and the parameter + optimizer bytes.

Prints a Markdown table; ``--json`` writes the numbers too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


# ---------------------------------------------------------------------- user tokenizer (child process)
def user_child(users: int, steps: int, cache: str, workdir: str, export: bool) -> dict:
    """One run of the loop; returns its numbers (runs in a child process: its own peak RSS)."""
    import numpy as np
    import psutil
    from u2qt import config as config_lib
    from u2qt.train.loop import run
    from u2qt.train.workdir import enable_compilation_cache
    enable_compilation_cache()  # as train.py: a second run of the same shapes skips the compile

    proc, peak = psutil.Process(), [0]
    stop = threading.Event()

    def sample():  # the RSS between ru_maxrss's start and end, to see when the peak happens
        while not stop.wait(0.5):
            peak[0] = max(peak[0], proc.memory_info().rss)
    threading.Thread(target=sample, daemon=True).start()
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "default.py"))
    overrides = {"data.synthetic_users": users, "data.stream_chunk_users": 100_000, "data.cache_dir": cache,
                 "train.progress": False,
                 "train.log_every": max(d for d in range(1, 26) if steps % d == 0),  # step `steps` is logged
                 # steps + 1 in both modes (the same compiled step): a halted run stops after `steps`.
                 "train.steps": steps + 1, "train.eval_every": steps + 1,
                 "train.checkpoint_every": steps + 1, "train.halt_after_step": 0 if export else steps,
                 "quantizer.kmeans_at_step": min(150, steps // 2)}
    for k, v in overrides.items():
        config_lib.apply_override(cfg, k, repr(v))
    times: dict = {}
    marks = []

    import u2qt.train.loop as loop_lib
    printed = loop_lib.log

    def log(msg):  # timestamps of the phases, from the loop's own lines
        marks.append((time.time(), msg))
        printed(msg)
    loop_lib.log = log
    t0 = time.time()
    run(cfg, workdir)
    t_end = time.time()
    stop.set()
    start = next(t for t, m in marks if m.startswith("data: ") and "training rows" in m)
    compiled = next(t for t, m in marks if m.startswith("train step compiled"))
    last_step = steps + 1 if export else steps
    last = max(t for t, m in marks if m.startswith("train: ") and f" {last_step}/" in m)
    times["setup_s"] = start - t0  # build (or open) the examples, text embeddings, task
    times["train_s"] = last - compiled
    times["after_last_step_s"] = t_end - last  # export: evaluation + semantic IDs + files (or the halt's save)
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    kmeans = min(150, steps // 2)
    # The first logged rate includes the first steps' start-up; the k-means step stalls one interval.
    logged = [m for m in metrics if m["split"] == "train"][1:]
    rates = [m["rows_per_s"] for m in logged if m["step"] > kmeans + 25 or steps <= kmeans + 25]
    from u2qt.data.stream import StreamedExamples
    stream_dir = os.path.join(cache, "stream")
    examples = [StreamedExamples(os.path.join(stream_dir, d)) for d in os.listdir(stream_dir)
                if os.path.isfile(os.path.join(stream_dir, d, "manifest.json"))]
    data_bytes = next(e.nbytes for e in examples if e.rows == users)
    return {"users": users, "steps": steps, "rows_per_s": float(np.mean(rates)) if rates else None,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "sampled_rss": peak[0],
            "data_bytes": data_bytes, "export": export, **times}


def step_flops(users: int, cache: str) -> dict:
    """FLOPs and bytes of one user-tokenizer train step (XLA cost analysis of the compiled step)."""
    import jax
    import numpy as np
    from u2qt import config as config_lib
    from u2qt.tasks.core import make_task
    from u2qt.train.step import init_state, make_optimizer, make_train_step
    from u2qt.train.workdir import enable_compilation_cache
    enable_compilation_cache()
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "default.py"))
    for k, v in {"data.synthetic_users": users, "data.stream_chunk_users": 100_000, "data.cache_dir": cache}.items():
        config_lib.apply_override(cfg, k, repr(v))
    task = make_task(cfg, cache, lambda m: None)
    tx = make_optimizer(cfg, task)
    b = cfg.train.batch_size
    sample = {k: np.asarray(task.examples[k][:b]) for k in task.model_keys}
    constants = {k: np.asarray(v) for k, v in task.constants.items()}
    state = jax.eval_shape(lambda key: init_state(task, tx, cfg, key, sample, constants), jax.random.key(0))
    compiled = jax.jit(make_train_step(task, tx, cfg)).lower(state, sample, constants).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    return {"flops_per_step": float(cost.get("flops", 0.0)), "bytes_accessed_per_step": float(cost.get("bytes accessed", 0.0)),
            "batch_size": b, "params": params, "row_bytes": task.examples.layout.row_bytes
            if hasattr(task.examples, "layout") else None}


# ---------------------------------------------------------------------- recommender
def recommender(items: int, batch: int, steps: int, max_len: int = 20, dim: int = 64) -> dict:
    """The SASRec-ID train step (full softmax over ``items``) on synthetic Zipf sequences."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from u2qt.models.sasrec import SASRec, sasrec_loss

    model = SASRec(mode="id", codes=None, num_items=items, d_model=dim, num_layers=2, num_heads=2, dropout=0.3,
                   max_len=max_len)
    rng = np.random.default_rng(0)

    def batch_of(i):
        seq = np.minimum(rng.zipf(1.2, size=(batch, max_len + 1)), items).astype(np.int32)
        return {"inputs": seq[:, :-1], "targets": seq[:, 1:]}
    params = model.init(jax.random.key(0), batch_of(0)["inputs"])["params"]
    tx = optax.adamw(1e-3)
    opt = tx.init(params)

    def step(params, opt, batch, key):
        loss, grads = jax.value_and_grad(lambda p: sasrec_loss(p, batch, model, dropout_rng=key))(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    t0 = time.time()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt, batch_of(0), jax.random.key(1)).compile()
    compile_s = time.time() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    batches = [batch_of(i) for i in range(steps + 1)]
    params, opt, loss = compiled(params, opt, batches[0], jax.random.key(1))  # warm-up
    jax.block_until_ready(loss)
    t0 = time.time()
    for i in range(1, steps + 1):
        params, opt, loss = compiled(params, opt, batches[i], jax.random.key(i))
    jax.block_until_ready(loss)
    dt = (time.time() - t0) / steps
    state_bytes = sum(x.nbytes for x in jax.tree.leaves((params, opt)))
    return {"items": items, "batch_size": batch, "max_len": max_len, "dim": dim, "step_s": dt,
            "rows_per_s": batch / dt, "flops_per_step": float(cost.get("flops", 0.0)), "compile_s": compile_s,
            "state_bytes": state_bytes, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "loss": float(loss)}


# ---------------------------------------------------------------------- driver
def child(cache: str, kind: str, *args) -> dict:
    """Runs ``kind`` in a fresh process (its own peak memory); returns its JSON line."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--cache", cache, "--child", kind,
                          *map(str, args)],
                         cwd=REPO, stdout=subprocess.PIPE, text=True)
    if out.returncode:
        raise SystemExit(f"bench_scale: the {kind} child {args} failed with status {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1].removeprefix("BENCH "))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", default="1000000,10000000")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--export-users", type=int, default=1_000_000, help="0: skip the export measurement")
    p.add_argument("--items", type=int, default=1_000_000, help="recommender items; 0: skip")
    p.add_argument("--rec-batch", type=int, default=32)
    p.add_argument("--rec-steps", type=int, default=5)
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "u2qt_bench_scale"),
                   help="examples are built here once (about 0.8 KB per user)")
    p.add_argument("--json", default="")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "user":
            users, steps, export = int(rest[0]), int(rest[1]), rest[2] == "1"
            with tempfile.TemporaryDirectory(dir=args.cache) as workdir:
                result = user_child(users, steps, args.cache, workdir, export)
        elif kind == "flops":
            result = step_flops(int(rest[0]), args.cache)
        else:
            result = recommender(int(rest[0]), int(rest[1]), int(rest[2]))
        print("BENCH " + json.dumps(result), flush=True)
        return 0

    import jax
    os.makedirs(args.cache, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {jax.default_backend()}"
    results: dict = {"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "user": [],
                     "export": None, "flops": None, "recommender": None}
    sizes = [int(u) for u in args.users.split(",") if u]
    for users in sizes:
        results["user"].append(child(args.cache, "user", users, args.steps, 0))
        print(f"user tokenizer, {users:,} users: {results['user'][-1]}", flush=True)
    if sizes:
        results["flops"] = child(args.cache, "flops", sizes[0])
    if args.export_users:
        results["export"] = child(args.cache, "user", args.export_users, args.steps, 1)
        print(f"export at {args.export_users:,} users: {results['export']}", flush=True)
    if args.items:
        results["recommender"] = child(args.cache, "rec", args.items, args.rec_batch, args.rec_steps)

    gib = 2**30
    print(f"\n{machine}, {results['date']}\n")
    print("| model | rows | data on disk | setup (build or open) | train rows/s | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results["user"]:
        print(f"| user tokenizer, streamed | {r['users']:,} users | {r['data_bytes'] / gib:.2f} GiB | "
              f"{r['setup_s']:.0f} s | {r['rows_per_s'] or 0:,.0f} | {r['peak_rss'] / gib:.2f} GiB |")
    if results["recommender"]:
        r = results["recommender"]
        print(f"| SASRec-ID, full softmax | {r['items']:,} items | - | compile {r['compile_s']:.0f} s | "
              f"{r['rows_per_s']:,.1f} (batch {r['batch_size']} × {r['max_len']}) | {r['peak_rss'] / gib:.2f} GiB |")
    if results["export"]:
        r = results["export"]
        print(f"\nend of run at {r['users']:,} users (evaluation + semantic IDs + files): "
              f"{r['after_last_step_s']:.0f} s = {r['users'] / r['after_last_step_s']:,.0f} users/s")
    if results["flops"]:
        f = results["flops"]
        print(f"user tokenizer step: {f['flops_per_step'] / 1e9:.1f} GFLOP per step of {f['batch_size']} users "
              f"({f['flops_per_step'] / f['batch_size'] / 1e6:.1f} MFLOP per user), {f['params']:,} parameters, "
              f"{f['row_bytes']} bytes per user on disk")
    if results["recommender"]:
        r = results["recommender"]
        print(f"recommender step: {r['flops_per_step'] / 1e9:.1f} GFLOP per step of {r['batch_size']} sequences, "
              f"parameters + AdamW state {r['state_bytes'] / gib:.2f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
