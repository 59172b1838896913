"""Export a finished run to a serving bundle (read back by ``u2qt.serving.load``).

    python -m u2qt.export --workdir runs/beauty_id --out bundles/beauty_id [--platforms cpu,cuda,tpu]

Rebuilds the run's task from its ``config.json`` (the data are read again: the constants, such
as item text embeddings, come from them), restores the newest checkpoint (the selected
parameters when the run kept the best validation step), and writes every function the task
declares ``Servable`` with ``jax.export`` for each platform, with a symbolic batch dimension, plus
the parameters, the constants, the run's ID tables and a manifest with every file's checksum
(layout: ``u2qt/serving.py``). The bundle is written next to ``--out`` and renamed into place
when complete, so a killed export never leaves a half bundle at ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile

import jax
import numpy as np

from u2qt import config as config_lib
from u2qt import serving
from u2qt.errors import WorkdirError
from u2qt.files import sha256
from u2qt.tasks.core import Servable, Tokenizes, make_task

COPIED = ("semantic_ids.parquet", "dataset_spec.json", "config.json", "summary.json")
# The loader travels with the bundle (jax + numpy only): PYTHONPATH=BUNDLE/loader python -m u2qt.serving BUNDLE
LOADER = ("__init__.py", "files.py", "serving.py", "prep/__init__.py", "prep/ids.py", "prep/users.py", "prep/wordpiece.py")


def _version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def trained_params(workdir: str):
    """The parameters of the newest checkpoint in ``workdir``: the kept best ones if the run
    selected by a validation metric, else the last."""
    import orbax.checkpoint as ocp
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    mngr = ocp.CheckpointManager(directory) if os.path.isdir(directory) else None
    step = mngr.latest_step() if mngr else None
    if step is None:
        raise WorkdirError(f"{workdir}: no checkpoint to export (train the run first)")
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return (state["best"]["params"] if "best" in state else state["params"]), step


def _spec(x) -> dict:
    return {"shape": [d if isinstance(d, int) else str(d) for d in x.shape], "dtype": str(np.dtype(x.dtype))}


def export_run(workdir: str, out: str, platforms: tuple[str, ...] = ("cpu", "cuda", "tpu"), log=print) -> dict:
    """Writes the bundle of ``workdir`` to ``out``; returns its manifest."""
    cfg = config_lib.load_config_file(os.path.join(workdir, "config.json"))
    if "quantizer" in cfg:  # the export-stable kernel path: plain XLA, no size-based choice on a symbolic batch
        config_lib.apply_override(cfg, "quantizer.implementation", "reference")
    task = make_task(cfg, cfg.data.get("cache_dir") or os.path.join(workdir, "cache"), log)
    if not isinstance(task, Servable):
        raise WorkdirError(f"{workdir}: task {cfg.task!r} declares no serving functions")
    params, step = trained_params(workdir)
    params = jax.tree.map(np.asarray, params)
    served = task.serving_functions()
    constants = dict(task.constants)
    for name, fn in served.items():  # arrays only serving needs (e.g. the text encoder), one tree for all
        clash = set(fn.constants) & set(constants)
        if clash:
            raise ValueError(f"{name}: serving constants {sorted(clash)} clash with the task's")
        constants.update(fn.constants)
    constants = jax.tree.map(np.asarray, constants)
    dims = sorted({d for fn in served.values() for shape, _ in fn.inputs.values() for d in shape if isinstance(d, str)})
    symbols = dict(zip(["batch", *dims], jax.export.symbolic_shape(", ".join(["batch", *dims]))))
    named = lambda shape: ["batch" if d is None else d for d in shape]
    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "functions"))
        functions = {}
        abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)
        for name, fn in served.items():
            inputs = [jax.ShapeDtypeStruct(tuple(symbols.get(d, d) for d in named(shape)), dtype)
                      for shape, dtype in fn.inputs.values()]
            lower = lambda targets: jax.export.export(jax.jit(fn.fn), platforms=targets)(
                abstract(params), abstract(constants), *inputs)
            failed = {}
            try:  # all platforms in one lowering, the usual case
                done = lower(tuple(platforms))
            except Exception:  # noqa: BLE001 — find the platforms that cannot lower here and leave them out
                for platform in platforms:
                    try:
                        lower((platform,))
                    except Exception as e:  # noqa: BLE001 — e.g. a kernel with no lowering for that platform
                        failed[platform] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                if len(failed) == len(platforms):
                    raise WorkdirError(f"{name}: could not be exported for any of {platforms}: {failed}") from None
                done = lower(tuple(p for p in platforms if p not in failed))
            ok = tuple(p for p in platforms if p not in failed)
            file = os.path.join("functions", f"{name}.jax")
            with open(os.path.join(tmp, file), "wb") as f:
                f.write(done.serialize())
            outputs = jax.tree.map(_spec, done.out_avals)
            functions[name] = {"file": file, "doc": fn.doc, "platforms": list(ok), "not_exported": failed,
                               "inputs": {k: {"shape": named(shape), "dtype": str(np.dtype(dtype))}
                                          for k, (shape, dtype) in fn.inputs.items()},
                               "outputs": outputs, **{k: v for k, v in fn.meta.items() if k != "files"}}
            for dest, source in fn.meta.get("files", {}).items():  # e.g. the tokenizer a client needs
                shutil.copy(source, os.path.join(tmp, dest))
            log(f"export: {name} for {', '.join(ok)}" + (f" (not {', '.join(failed)})" if failed else ""))
        checks = {}
        for name, fn in served.items():  # the example inputs and their in-process outputs (Bundle.self_check)
            if fn.example:
                result = jax.device_get(jax.jit(fn.fn)(params, constants, *fn.example))
                checks[name] = {"inputs": {str(i): np.asarray(x) for i, x in enumerate(fn.example)},
                                "outputs": serving.flatten(jax.tree.map(np.asarray, serving.as_tree(result)))}
        if checks:
            np.savez(os.path.join(tmp, serving.SELF_CHECK), **serving.flatten(checks))
        np.savez(os.path.join(tmp, "params.npz"), **serving.flatten(params))
        np.savez(os.path.join(tmp, "constants.npz"), **serving.flatten(constants))
        package = os.path.dirname(os.path.abspath(__file__))
        for name in LOADER:
            os.makedirs(os.path.dirname(os.path.join(tmp, "loader", "u2qt", name)), exist_ok=True)
            shutil.copy(os.path.join(package, name), os.path.join(tmp, "loader", "u2qt", name))
        for name in COPIED:
            if os.path.exists(os.path.join(workdir, name)):
                shutil.copy(os.path.join(workdir, name), os.path.join(tmp, name))
        item_ids = getattr(getattr(task, "data", None), "item_ids", None)
        if item_ids is not None:  # item index i + 1 ↔ item id (index 0 is padding)
            with open(os.path.join(tmp, "items.json"), "w") as f:
                json.dump([None] + [str(i) for i in item_ids], f)
        files = {}
        for root, _, names in os.walk(tmp):
            for n in names:
                rel = os.path.relpath(os.path.join(root, n), tmp)
                files[rel] = sha256(os.path.join(root, n))
        manifest = {
            "format_version": serving.FORMAT_VERSION, "u2qt_version": _version(), "jax_version": jax.__version__,
            "task": cfg.task, "workdir": os.path.abspath(workdir), "checkpoint_step": int(step),
            "config": json.loads(config_lib.to_json(cfg)), "functions": functions,
            "codebooks": ({v: {"levels": l, "codes": k} for v, (l, k) in task.stacks.items()}
                          if isinstance(task, Tokenizes) else {}),
            "parameters": int(sum(np.size(x) for x in jax.tree.leaves(params))),
            "files": files,
        }
        with open(os.path.join(tmp, serving.MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"export: bundle in {out} ({len(functions)} functions, {manifest['parameters']:,} parameters)")
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a trained run")
    p.add_argument("--out", required=True, help="the bundle directory to write (replaced if it exists)")
    p.add_argument("--platforms", default="cpu,cuda,tpu")
    args = p.parse_args(argv)
    export_run(args.workdir, args.out, tuple(x.strip() for x in args.platforms.split(",") if x.strip()))
    return 0


if __name__ == "__main__":
    from u2qt.errors import cli_exit
    raise SystemExit(cli_exit(main))
