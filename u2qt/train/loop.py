"""The one train loop, read top to bottom: workdir → task → mesh → state → restore → compile the
step → loop (log, evaluate, checkpoint) → report.

Everything model-specific comes from the task (``u2qt/tasks/core.py``): its core (examples,
init, loss) and the capabilities it declares. For a task that ``Tokenizes`` the codebook hook
(``u2qt/train/codebooks.py``) adds k-means initialisation, code health and the semantic-ID
table; for one that ``Evaluates``, validation metrics select the parameters and a test report
ends the run. The step itself is ``u2qt/train/step.py``.

Sharded from the first line (``u2qt/train/sharding.py``); the same code runs on 1 CPU device, 8
fake ones, or a GPU/TPU slice, in one process or several (``u2qt/train/distributed.py``: every
process runs this function; process 0 alone writes the workdir's files, all of them write the
checkpoints together; each builds only its own rows of every batch). Rerunning the same command
resumes from the newest complete checkpoint.
"""
from __future__ import annotations

import contextlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from u2qt import config as config_lib
from u2qt import defaults
from u2qt import files
from u2qt.errors import NonFiniteError
from u2qt.progress import Progress, on_terminal
from u2qt.data.pipeline import make_train_iterator
from u2qt.data.tfds_builder import build_data_source, examples_fingerprint
from u2qt.tasks.core import Evaluates, Tokenizes, make_task
from u2qt.train import batches as batches_lib
from u2qt.train import checkpoint, distributed, report
from u2qt.train.codebooks import CodebookHook
from u2qt.train.sharding import Placement
from u2qt.train.step import InFlight, hparams, init_state, make_optimizer, make_train_step, resolve_epochs
from u2qt.train.workdir import (MetricsWriter, check_data, data_fingerprint, open_workdir, run_once_options,
                                save_config)


def log(msg: str) -> None:
    if distributed.is_main():
        print(msg, flush=True)


def check_batch(batch: dict, step: int) -> None:
    """Bad numbers in a batch stop the run with a message that says where they are."""
    for key, value in batch.items():
        rows = batches_lib.nonfinite_rows(value)
        if len(rows):
            raise NonFiniteError(f"step {step}: batch key {key!r} holds NaN/Inf in batch rows {rows[:5].tolist()}")


def compile_step(train_step, placement: Placement, state_shardings, data_shardings, abstract_state, step_inputs,
                 constants):
    """The train step compiled ahead of time for these shardings (the state donated); its
    ``memory_analysis()`` gives the bytes per device (the loop logs them, the mesh benchmark and
    tests compare them)."""
    return jax.jit(train_step, in_shardings=(state_shardings, data_shardings, placement.replicated),
                   out_shardings=(state_shardings, placement.replicated), donate_argnums=(0,)).lower(
        abstract_state, step_inputs, constants).compile()


def run(cfg, workdir: str) -> dict:
    """Trains (or resumes) the run of ``cfg`` in ``workdir``; returns the summary. ``cfg`` is not
    changed (the run works on a copy). A config with a ``federated`` family runs the federated
    trainer instead (``u2qt/train/federated.py``), which wraps the same train step."""
    if "federated" in cfg:
        from u2qt.train import federated
        return federated.run(cfg.copy_and_resolve_references(), workdir)
    with contextlib.ExitStack() as scope:
        return _run(cfg.copy_and_resolve_references(), workdir, scope)


def _run(cfg, workdir: str, scope: contextlib.ExitStack) -> dict:
    # ------------------------------------------------------------------ config, workdir, task
    config_lib.validate(cfg, defaults.CONSTRAINTS, defaults.cross_key_problems)  # before any work
    # The mesh (u2qt/train/sharding.py) needs only the devices: a mesh.model or batch size that does
    # not fit them is refused before the workdir is touched.
    placement = Placement(cfg.train.batch_size, cfg.mesh.model)
    if cfg.train.batch_size % placement.data:
        raise config_lib.ConfigError(
            f"config train.batch_size={cfg.train.batch_size} must be a multiple of the {placement.data} devices "
            f"of the mesh's data axis")
    # Each step that writes the workdir or a cache runs on process 0 first; the others wait for it
    # and stop with its error if it fails.
    resuming = open_workdir(cfg, workdir, scope)
    cache_dir = cfg.data.cache_dir or os.path.join(workdir, "cache")
    t_start = time.time()
    task = distributed.main_first(lambda: make_task(cfg, cache_dir, log), others=True)  # fills the text caches once
    examples_hash = examples_fingerprint(task.examples)  # the workdir's record, and the streamed files' key

    def claim_workdir():  # the data are read and valid: now the workdir is this run's
        inputs = data_fingerprint(cfg.data.get("path", ""), examples_hash, extra=(cfg.model.get("codes_path", ""),))
        check_data(workdir, inputs, resuming, cfg.train.finetune_changed_data, log)
        save_config(cfg, workdir)
        if hasattr(task, "write_spec"):
            task.write_spec(workdir)

    distributed.main_first(claim_workdir, others=False)
    tokenizer = isinstance(task, Tokenizes)
    evaluates = isinstance(task, Evaluates)
    model_examples = {k: v for k, v in task.examples.items() if k in task.model_keys}
    on_device = batches_lib.use_device(model_examples, task.model_keys, cfg.data.device_mb)
    rows, mib = len(next(iter(model_examples.values()))), batches_lib.nbytes(model_examples, task.model_keys) / 2**20
    # The saved config keeps train.epochs as given (the resume check compares that); the steps it
    # means depend on the data, which check_data guards. In place: the task reads the same config.
    resolve_epochs(cfg, rows, log)

    # ------------------------------------------------------------------ mesh
    # The ambient mesh lets nearest-code kernels run under shard_map over "data" (u2qt/kernels/codebook_assign).
    scope.enter_context(jax.set_mesh(placement.mesh))
    devices = placement.devices
    constants = {k: jax.device_put(np.asarray(v), placement.replicated) for k, v in task.constants.items()}
    # The learning rate, schedule lengths and seed as inputs of the compiled step (u2qt/train/step.py).
    constants["hparams"] = {k: jax.device_put(v, placement.replicated) for k, v in hparams(cfg).items()}
    if on_device:  # batches are drawn on the devices: one check of every row now, none per step
        batches_lib.check_finite(model_examples, task.row_ids if tokenizer and task.rows is task.examples else None)
        batches = batches_lib.DeviceBatches(model_examples, task.model_keys, cfg.train.batch_size, cfg.seed, placement)
        log(f"data: {rows:,} training rows ({mib:.2f} MiB) on the device(s); batches are drawn there")
    else:
        train_source = distributed.main_first(
            lambda: build_data_source(task.examples, os.path.join(cache_dir, "tfds"), examples_hash), others=True)
        log(f"data: {rows:,} training rows ({mib:.1f} MiB > data.device_mb={cfg.data.device_mb}) stream "
            f"through grain from array_record files")
        if jax.process_count() > 1:
            b = cfg.train.batch_size // jax.process_count()
            log(f"data: each of {jax.process_count()} processes reads only its block of {b} rows of every "
                f"batch of {cfg.train.batch_size} (process p: rows [p·{b}, (p+1)·{b}))")

    # ------------------------------------------------------------------ model, optimizer, state
    tx = make_optimizer(cfg, task)
    # Shapes only; as many rows as devices so kernels under shard_map can split it.
    sample = {k: np.asarray(v[:max(2, len(devices))]) for k, v in task.examples.items() if k in task.model_keys}
    root_key = jax.random.key(cfg.seed)
    def init(key):
        state = init_state(task, tx, cfg, key, sample, constants)
        return dict(state, data=batches.initial_state()) if on_device else state

    abstract = jax.eval_shape(init, root_key)
    # Parameters replicated, but for the large tables that the rules split over "model"; the
    # optimizer moments and best-so-far copies follow their parameter (u2qt/train/sharding.py).
    state_shardings = placement.state_shardings(abstract, log)
    # Runs once: compiled for compile time, not run time (u2qt/train/workdir.py).
    state = jax.jit(init, out_shardings=state_shardings, compiler_options=run_once_options())(root_key)
    placement.check_state(state, "the initial train state")
    num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    log(f"model: {num_params:,} parameters on {len(devices)} {devices[0].platform} device(s)"
        + (f" of {jax.process_count()} processes" if jax.process_count() > 1 else "")
        + (f", mesh data {placement.data} × model {placement.model}" if placement.model > 1 else ""))

    # ------------------------------------------------------------------ data iterator, restore
    if not on_device:
        placement.process_rows()  # raises unless this process's devices hold the block p its iterator reads
    train_iter = None if on_device else make_train_iterator(
        train_source, global_batch_size=cfg.train.batch_size, seed=cfg.seed,
        process_index=jax.process_index(), process_count=jax.process_count())
    mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), cfg.train.keep_checkpoints)
    scope.callback(mngr.wait_until_finished)  # an error exit still completes a pending save
    restored, restored_step = checkpoint.restore_latest(mngr, checkpoint.abstract_like(state), train_iter)
    if restored is not None:
        state = restored
        placement.check_state(state, f"the train state restored from step {restored_step}")
        log(f"resumed from the checkpoint of step {restored_step}")
    hook = CodebookHook(task, cfg, constants, placement, log) if tokenizer else None

    # ------------------------------------------------------------------ train step, compiled once
    t0 = time.time()
    train_step = make_train_step(task, tx, cfg)
    if on_device:
        step_inputs = batches.arrays
        train_step = batches_lib.with_device_batches(train_step, batches)
        data_shardings = jax.tree.map(lambda _: placement.replicated, step_inputs)
    else:
        step_inputs = {k: jax.ShapeDtypeStruct((cfg.train.batch_size,) + v.shape[1:], v.dtype, sharding=placement.batch)
                       for k, v in model_examples.items()}
        data_shardings = {k: placement.batch for k in task.model_keys}
    step_fn = compile_step(train_step, placement, state_shardings, data_shardings, checkpoint.abstract_like(state),
                           step_inputs, constants)
    memory = step_fn.memory_analysis()
    log(f"train step compiled in {time.time() - t0:.1f}s" + (
        f"; per device: arguments {memory.argument_size_in_bytes / 2**20:.1f} MiB, "
        f"temporaries {memory.temp_size_in_bytes / 2**20:.1f} MiB" if memory is not None else ""))

    # ------------------------------------------------------------------ periodic evaluation
    select_metric = cfg.train.select_metric

    def evaluate(state, done: int, writer):
        """Code health, the task's validation metrics, and best-so-far selection."""
        in_flight.drain()  # the evaluation's timing counts the evaluation, not the queued steps
        ev = {}
        if hook:
            ev.update(hook.evaluate(state["params"]))
        if evaluates:
            ev.update(task.evaluate(state["params"], constants))
        writer.write(done, "eval", ev)
        if select_metric:
            if checkpoint.improves(ev, select_metric, state["best"]["value"]):
                best = {"params": jax.tree.map(jnp.copy, state["params"]),
                        "value": jnp.asarray(ev[select_metric], jnp.float32), "step": jnp.asarray(done, jnp.int32)}
                state = dict(state, best=jax.device_put(best, state_shardings["best"]))
            log(f"eval at step {done}: {select_metric} {ev[select_metric]:.4f} (best so far "
                f"{float(state['best']['value']):.4f})")
        return state

    # ------------------------------------------------------------------ loop
    steps = cfg.train.steps
    writer = MetricsWriter(workdir, resume_step=restored_step or 0)
    start = int(state["step"])
    # A bar on a terminal (train.progress); elsewhere one log line per logging step.
    progress = Progress(steps, "train", "steps", log=log, initial=start, every_s=float("inf"),
                        bar=bool(cfg.train.progress) and on_terminal() and distributed.is_main())
    t_last, step_last = time.time(), start
    halted = False
    in_flight = InFlight()
    for step in range(start, steps):
        if hook:
            state = hook.before_step(state, step)
        if on_device:
            state, metrics = step_fn(state, step_inputs, constants)
        else:
            local = next(train_iter)
            check_batch(local, step)
            state, metrics = step_fn(state, placement.local_to_device(local, task.model_keys), constants)
        # At most two steps run ahead of the host: the device always has the next step queued
        # while the progress bar counts finished steps.
        in_flight.add(metrics)
        done = step + 1
        progress.update(1)
        if done % cfg.train.log_every == 0 or done == steps:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            bad = [k for k, v in m.items() if not np.isfinite(v)]
            if bad:
                raise NonFiniteError(f"step {done}: non-finite {bad}; no checkpoint written for this step")
            now = time.time()
            m["rows_per_s"] = (done - step_last) * cfg.train.batch_size / max(now - t_last, 1e-9)
            t_last, step_last = now, done
            writer.write(done, "train", m)
            progress.postfix(loss=f"{m['loss']:.3f}", rows_s=f"{m['rows_per_s']:.0f}")
            if progress.bar is None:
                log(progress.line(f"loss {m['loss']:.4f}, {m['rows_per_s']:,.0f} {getattr(task, 'row_kind', 'row')}s/s"))
        if done % cfg.train.eval_every == 0 or done == steps:
            state = evaluate(state, done, writer)
        if checkpoint.due(done, steps, cfg.train):
            checkpoint.check_finite(state, done, mngr.latest_step())  # a poisoned state is never saved
            checkpoint.save(mngr, done, state, train_iter, force=True)
        if done == cfg.train.halt_after_step:
            halted = True
            break
    mngr.wait_until_finished()
    progress.close()
    if halted:
        return checkpoint.halted(cfg.train, "step", writer, log)

    # ------------------------------------------------------------------ report
    params = state["params"]
    summary = {}
    if select_metric:
        params = state["best"]["params"]
        summary["selected"] = {"metric": select_metric, "value": float(state["best"]["value"]),
                               "step": int(state["best"]["step"])}
    exported = None
    if hook:
        codes_summary, exported = hook.finish(params, workdir)
        summary.update(codes_summary)
    if evaluates:
        summary["test"] = task.report(params, constants)
    if getattr(task, "data_warnings", None):
        summary["data_warnings"] = task.data_warnings
    summary["steps"] = steps
    if cfg.train.epochs:
        summary["epochs"] = cfg.train.epochs
    summary["wall_seconds"] = time.time() - t_start
    if distributed.is_main():
        files.write_json(os.path.join(workdir, "summary.json"), summary)
        writer.write(steps, "final", {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        report.plot_run(os.path.join(workdir, "training.png"), os.path.join(workdir, "metrics.jsonl"),
                        title=f"{os.path.basename(os.path.abspath(workdir))}: task {cfg.task}, {steps:,} steps, "
                              f"batch {cfg.train.batch_size}, seed {cfg.seed}",
                        codes_by_view=exported, num_codes=hook.sizes if hook else None,
                        test=summary.get("test"), selected=summary.get("selected"))
    writer.close()
    log(report.summary_text(summary, workdir, getattr(task, "row_kind", "row")))
    return summary
