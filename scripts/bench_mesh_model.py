"""Memory per device of the recommender's train step as the item table grows and the mesh's model
axis splits it (config ``mesh.model``; the sharding rules of ``u2qt/train/sharding.py``).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
      python scripts/bench_mesh_model.py [--items 16383,131071,1048575] [--models 1,2,4,8] [--dim 64] [--json out.json]

For each item count it writes a synthetic LC-Rec directory (``write_lcrec``), builds the
recommender task (SASRec over item IDs, ``configs/amazon.py:lcrec,id``) as ``train.py`` does,
and for each mesh.model compiles the loop's own step (``u2qt.train.loop.compile_step``, with the
state laid out by ``Placement.state_shardings``) without running it, and prints XLA's
``memory_analysis()`` per device:
  arguments   the train state (parameters, Adam moments, best-so-far copy) and one batch
  temps       the step's temporaries (activations, gradients, the [positions, I+1] logits)
  table share the item table's part of the arguments: its 4 copies (parameter, 2 moments, best)
              at 1/mesh.model each when split
The batch is one of ``--batch`` rows sharded over "data", as when examples stream through grain
(the examples drawn on device would add the whole example table to every device's arguments).
Every mesh has the same devices (8 by default): data = devices / mesh.model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def write_lcrec(root: str, items: int, users: int, seed: int = 0, name: str = "Synth") -> str:
    """An LC-Rec directory of ``items`` items (short texts) and ``users`` users with 6-10
    interactions each; each user draws mostly from one of 16 item groups, so the next item is
    predictable above chance."""
    import numpy as np
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    groups = np.arange(items) % 16
    inter = {}
    for u in range(users):
        mine = np.flatnonzero(groups == u % 16)
        n = int(rng.integers(6, 11))
        picks = np.where(rng.random(n) < 0.8, rng.choice(mine, n), rng.integers(0, items, n))
        inter[str(u)] = [str(int(i)) for i in picks]
    item_json = {str(i): {"title": f"thing {i} of group {groups[i]}", "brand": f"b{i % 5}",
                          "categories": f"c{groups[i]}", "description": "d"} for i in range(items)}
    json.dump(inter, open(os.path.join(root, f"{name}.inter.json"), "w"))
    json.dump(item_json, open(os.path.join(root, f"{name}.item.json"), "w"))
    return root


def recommender_config(data: str, dim: int, batch: int):
    from u2qt import config as config_lib
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "amazon.py:lcrec,id,runlocal"))
    for key, value in {"data.path": data, "train.epochs": "0", "train.steps": "10", "model.dim": str(dim),
                       "train.batch_size": str(batch), "train.progress": "False"}.items():
        config_lib.apply_override(cfg, key, value)
    return cfg


def step_memory(cfg, task, model: int) -> dict:
    """XLA's memory analysis per device of the recommender's train step on a mesh of
    devices / model × model, compiled as the loop compiles it (nothing runs)."""
    import jax
    import numpy as np

    from u2qt.train.loop import compile_step
    from u2qt.train.sharding import Placement
    from u2qt.train.step import init_state, make_optimizer, make_train_step

    placement = Placement(cfg.train.batch_size, model)
    with jax.set_mesh(placement.mesh):
        tx = make_optimizer(cfg, task)
        sample = {k: np.asarray(v[:max(2, len(placement.devices))]) for k, v in task.examples.items()
                  if k in task.model_keys}
        constants = placement.replicate({k: jax.numpy.asarray(v) for k, v in task.constants.items()})
        abstract = jax.eval_shape(lambda key: init_state(task, tx, cfg, key, sample, constants), jax.random.key(0))
        shardings = placement.state_shardings(abstract, log=lambda *_: None)
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
        inputs = {k: jax.ShapeDtypeStruct((cfg.train.batch_size,) + v.shape[1:], v.dtype, sharding=placement.batch)
                  for k, v in task.examples.items() if k in task.model_keys}
        t0 = time.perf_counter()
        compiled = compile_step(make_train_step(task, tx, cfg), placement, shardings,
                                {k: placement.batch for k in inputs}, abstract, inputs, constants)
        compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    split = [d for d in placement.decisions.values() if d.sharded]
    table_bytes = sum(int(np.prod(d.shape)) * 4 for d in split)  # float32 parameters
    copies = 3 + ("best" in abstract)  # the parameter, Adam's two moments, the best-so-far copy
    return {"items": task.data.num_items, "dim": cfg.model.dim, "mesh_model": model, "mesh_data": placement.data,
            "split": {d.path: list(d.spec) for d in split},
            "argument_bytes": int(m.argument_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
            "output_bytes": int(m.output_size_in_bytes), "table_bytes_whole": table_bytes * copies,
            "table_bytes_per_device": table_bytes * copies // model, "compile_s": compile_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", default="16383,131071,1048575", help="item counts (I; the table has I+1 rows)")
    p.add_argument("--models", default="1,2,4,8", help="mesh.model values (each must divide the devices)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--users", type=int, default=512)
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    import jax

    from u2qt.tasks.core import make_task
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for items in map(int, args.items.split(",")):
            data = write_lcrec(os.path.join(tmp, f"items{items}"), items, args.users)
            cfg = recommender_config(data, args.dim, args.batch)
            task = make_task(cfg, os.path.join(tmp, "cache"), log=lambda *_: None)
            for model in map(int, args.models.split(",")):
                rows.append(step_memory(cfg, task, model))
    mib = lambda b: f"{b / 2**20:,.1f}"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# {stamp}, jax {jax.__version__}, {len(jax.devices())} {jax.devices()[0].platform} devices, "
          f"{os.cpu_count()} cores; SASRec id, d={args.dim}, batch {args.batch}; MiB per device (XLA memory_analysis)")
    print("| items | mesh data × model | arguments | temps | item table (4 copies) | arguments vs model=1 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["items"] == r["items"] and b["mesh_model"] == 1) \
            if any(b["items"] == r["items"] and b["mesh_model"] == 1 for b in rows) else r
        print(f"| {r['items']:,} | {r['mesh_data']} × {r['mesh_model']} | {mib(r['argument_bytes'])} | "
              f"{mib(r['temp_bytes'])} | {mib(r['table_bytes_per_device'])} | "
              f"{r['argument_bytes'] / base['argument_bytes']:.3f} |")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
