"""The one train loop, read top to bottom: workdir → task (data, model) → mesh → state → restore
→ k-means init → step → loop (log, eval, checkpoint) → tokens and report.

Everything model-specific comes from a ``Task`` (``u2qt/train/task.py``); this file knows only
that a task has examples, parameters, an objective and codebook stacks to keep healthy.

Sharded from the first line: a ``data`` mesh axis over all devices, the batch split over it,
parameters replicated; the same code runs on 1 CPU device, 8 fake ones, or a GPU/TPU slice.
Rerunning the same command resumes from the newest complete checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from u2qt import config as config_lib
from u2qt.data.pipeline import iterate_in_order, make_train_iterator
from u2qt.data.tfds_builder import build_data_source, examples_fingerprint
from u2qt.model import quantizer as rq
from u2qt.train import checkpoint, report
from u2qt.train.task import make_task

RESUME_IGNORED = ("train.progress", "train.halt_after_step")


def enable_compilation_cache(path: str | None = None) -> None:
    """Persist compiled programs (default ~/.cache/u2qt/jax, or $U2QT_JAX_CACHE) so a rerun,
    a resume or a second config of the same shapes skips XLA compilation."""
    path = path or os.environ.get("U2QT_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "u2qt", "jax")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def check_batch(batch: dict, step: int) -> None:
    """Bad numbers in a batch stop the run with a message that says where they are."""
    for key, value in batch.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            rows = np.unique(np.nonzero(~np.isfinite(value))[0])
            users = batch["user_index"][rows][:5].tolist() if "user_index" in batch else rows[:5].tolist()
            raise FloatingPointError(f"step {step}: batch key {key!r} holds NaN/Inf for user rows {users}")


def _flat(cfg_dict: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg_dict.items():
        if isinstance(v, dict):
            out.update(_flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def prepare_workdir(cfg, workdir: str) -> None:
    """Saves the resolved config; refuses to resume a workdir that holds a different run."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    current = json.loads(config_lib.to_json(cfg))
    if os.path.exists(path):
        saved = json.load(open(path))
        a, b = _flat(saved), _flat(current)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_IGNORED)
        if diff:
            raise config_lib.ConfigError(
                f"{workdir} holds a run with a different config (keys {diff}); use a new --workdir "
                f"or the same config to resume")
    report.write_json(path, current)


def make_optimizer(cfg) -> optax.GradientTransformation:
    t = cfg.train
    warmup = min(t.warmup_steps, max(t.steps - 1, 0))  # a run shorter than the warm-up still decays
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.lr, warmup, max(t.steps, warmup + 1), t.lr * 0.05)
    # No weight decay on codebooks, biases, norms and embeddings-as-vectors (1-D parameters).
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, x: x.ndim > 1 and not str(path[-1]).count("codebooks"), params)
    return optax.chain(optax.clip_by_global_norm(t.clip_norm),
                       optax.adamw(schedule, weight_decay=t.weight_decay, mask=decay_mask))


def run(cfg, workdir: str) -> dict:
    """Trains (or resumes) the run of ``cfg`` in ``workdir``; returns the summary."""
    with contextlib.ExitStack() as scope:
        return _run(cfg, workdir, scope)


def _run(cfg, workdir: str, scope: contextlib.ExitStack) -> dict:
    # ------------------------------------------------------------------ workdir, config
    prepare_workdir(cfg, workdir)
    cache_dir = cfg.data.cache_dir or os.path.join(workdir, "cache")
    t_start = time.time()

    # ------------------------------------------------------------------ task: data and model
    task = make_task(cfg, cache_dir, log)
    tfds_dir = os.path.join(cache_dir, "tfds")
    train_source = build_data_source(task.train_examples, tfds_dir, examples_fingerprint(task.train_examples))
    encode_source = train_source if task.encode_examples is task.train_examples else build_data_source(
        task.encode_examples, tfds_dir, examples_fingerprint(task.encode_examples))
    model_keys = task.model_keys
    sizes = {view: codes for view, (_, codes) in task.stacks.items()}
    levels = {view: n for view, (n, _) in task.stacks.items()}

    # ------------------------------------------------------------------ mesh
    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    # The ambient mesh lets nearest-code kernels run under shard_map over "data" (kernels/codebook_assign).
    scope.enter_context(jax.set_mesh(mesh))
    if cfg.train.batch_size % len(devices):
        raise config_lib.ConfigError(
            f"config train.batch_size={cfg.train.batch_size} must be a multiple of the {len(devices)} devices")
    constants = {k: jax.device_put(jnp.asarray(v), replicated) for k, v in task.constants.items()}

    # ------------------------------------------------------------------ model, optimizer, state
    tx = make_optimizer(cfg)
    select_metric = cfg.train.select_metric
    # Shapes only; as many rows as devices so kernels under shard_map can split it.
    sample = {k: np.asarray(v[:max(2, len(devices))]) for k, v in task.train_examples.items() if k in model_keys}

    def init_state(key):
        params = task.init(key, sample, constants)
        usage = {view: jnp.full((levels[view], k), cfg.train.batch_size / k, jnp.float32) for view, k in sizes.items()}
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "usage": usage}
        if select_metric:  # the parameters with the best validation score so far, kept with the state
            state["best"] = {"params": params, "value": jnp.full((), -jnp.inf, jnp.float32),
                             "step": jnp.zeros((), jnp.int32)}
        return state

    root_key = jax.random.key(cfg.seed)
    abstract = jax.eval_shape(init_state, root_key)
    state_shardings = jax.tree.map(lambda _: replicated, abstract)
    state = jax.jit(init_state, out_shardings=state_shardings)(root_key)
    num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    log(f"model: {num_params:,} parameters on {len(devices)} {devices[0].platform} device(s)")

    # ------------------------------------------------------------------ data iterator, restore
    train_iter = make_train_iterator(train_source, global_batch_size=cfg.train.batch_size, seed=cfg.seed,
                                     process_index=jax.process_index(), process_count=jax.process_count())
    mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), cfg.train.keep_checkpoints)
    restored, restored_step = checkpoint.restore_latest(mngr, checkpoint.abstract_like(state), train_iter)
    if restored is not None:
        state = restored
        log(f"resumed from the checkpoint of step {restored_step}")

    # ------------------------------------------------------------------ tokens of all users
    tokens_fn = jax.jit(task.encode)

    def to_device(host_batch: dict) -> dict:
        """A global batch that every process holds whole → a batch sharded over "data"; each
        process contributes its own slice (the same code serves one process or a pod)."""
        count, index = jax.process_count(), jax.process_index()
        share = cfg.train.batch_size // count
        return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v[index * share:(index + 1) * share]))
                for k, v in host_batch.items() if k in model_keys}

    def to_host(x) -> np.ndarray:
        if jax.process_count() == 1:
            return np.asarray(x)
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    def encode_users(params, limit: int | None = None):
        """Codes, continuous vectors and per-level residuals of every encode row, in order."""
        codes, conts, res = [], [], []
        seen = 0
        for batch in iterate_in_order(encode_source, cfg.train.batch_size):
            valid = batch.pop("valid")
            c, h, r = tokens_fn(params, to_device(batch), constants)
            codes.append(to_host(c)[valid])
            conts.append(to_host(h)[valid])
            res.append(jax.tree.map(lambda x: to_host(x)[valid], r))
            seen += int(valid.sum())
            if limit and seen >= limit:
                break
        residuals = {k: np.concatenate([r[k] for r in res]) for k in res[0]}
        return np.concatenate(codes), np.concatenate(conts), residuals

    # ------------------------------------------------------------------ k-means initialisation
    kmeans_step = cfg.quantizer.kmeans_at_step if cfg.quantizer.kmeans_init else 0

    def kmeans_init(state):
        """Every codebook stack ← residual k-means on the current encodings of (up to
        quantizer.kmeans_users) users. Runs once, at step quantizer.kmeans_at_step: before it the
        encoders warm up unquantized, so the codebooks start where trained encodings are."""
        t0 = time.time()
        _, _, residuals = encode_users(state["params"], limit=cfg.quantizer.kmeans_users)
        params = dict(state["params"])
        key = jax.random.fold_in(root_key, 10_000_019)
        for i, (view, k) in enumerate(sizes.items()):
            usable = min(len(residuals[view]), cfg.quantizer.kmeans_users) // len(devices) * len(devices)
            z = jnp.asarray(residuals[view][:usable, 0])  # level-0 input = the view's vector
            name = f"codebooks_{view}"
            if z.shape[0] < k:
                raise config_lib.ConfigError(
                    f"k-means init: {z.shape[0]} users cannot initialise {k} codes of view {view!r}; "
                    f"lower quantizer.{'shared' if view == 'shared' else 'source'}_codes")
            books = rq.residual_kmeans(z, params[name].shape[0], k, jax.random.fold_in(key, i),
                                       iters=cfg.quantizer.kmeans_iters, implementation=rq.implementation(cfg.quantizer))
            params[name] = jax.device_put(books.astype(params[name].dtype), replicated)
        log(f"k-means init of {len(sizes)} codebook stacks at step {int(state['step'])} "
            f"on {usable} rows: {time.time() - t0:.1f}s")
        return dict(state, params=params)

    # ------------------------------------------------------------------ train step
    steps = cfg.train.steps
    qc = cfg.quantizer

    def train_step(state, batch, constants):
        step = state["step"]
        key = jax.random.fold_in(root_key, step)
        quantize_on = step >= kmeans_step
        grad_fn = jax.value_and_grad(lambda p: task.objective(p, batch, constants, key, quantize_on), has_aux=True)
        (_, (metrics, aux)), grads = grad_fn(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # Codebook health: EMA of code counts, and dead codes moved onto live residuals.
        do_reset = ((qc.reset_every > 0) & ((step + 1) % max(qc.reset_every, 1) == 0) & quantize_on
                    & (step + 1 <= qc.reset_until * steps))
        usage = {}
        for i, (view, k) in enumerate(sizes.items()):
            counts = rq.code_counts(aux["codes"][view], k)
            ema = qc.usage_decay * state["usage"][view] + (1 - qc.usage_decay) * counts
            mean_usage = cfg.train.batch_size / k
            name = f"codebooks_{view}"
            revived, dead = rq.reset_dead_codes(params[name], ema, aux["residuals"][view],
                                                jax.random.fold_in(key, 1000 + i),
                                                threshold=qc.dead_code_fraction * mean_usage)
            params[name] = jnp.where(do_reset, revived, params[name])
            usage[view] = jnp.where(do_reset & dead, mean_usage, ema)
            metrics[f"dead_{view}"] = jnp.mean(dead)
        metrics["grad_norm"] = optax.tree.norm(grads)
        new_state = dict(state, step=step + 1, params=params, opt_state=opt_state, usage=usage)
        return new_state, metrics

    batch_shardings = {k: batch_sharding for k in model_keys}
    # Compiled once, ahead of time, with its memory footprint logged (MaxText style).
    t0 = time.time()
    batch_abstract = {k: jax.ShapeDtypeStruct((cfg.train.batch_size,) + v.shape[1:], v.dtype, sharding=batch_sharding)
                      for k, v in task.train_examples.items() if k in model_keys}
    step_fn = jax.jit(train_step, in_shardings=(state_shardings, batch_shardings, replicated),
                      out_shardings=(state_shardings, replicated), donate_argnums=(0,)).lower(
        checkpoint.abstract_like(state), batch_abstract, constants).compile()
    memory = step_fn.memory_analysis()
    log(f"train step compiled in {time.time() - t0:.1f}s" + (
        f"; per device: arguments {memory.argument_size_in_bytes / 2**20:.1f} MiB, "
        f"temporaries {memory.temp_size_in_bytes / 2**20:.1f} MiB" if memory is not None else ""))

    # ------------------------------------------------------------------ periodic evaluation
    def evaluate(state, done: int, writer):
        """Code health of every stack, the task's own validation metrics, and best-so-far selection."""
        ev = {}
        if sizes:
            codes, _, _ = encode_users(state["params"])
            ev.update(_code_metrics(_split_views(codes, levels), sizes))
        if hasattr(task, "evaluate"):
            ev.update(task.evaluate(state["params"], constants))
        writer.write(done, "eval", ev)
        if select_metric:
            if select_metric not in ev:
                raise config_lib.ConfigError(f"config train.select_metric={select_metric!r} is not an eval metric; "
                                             f"known: {sorted(ev)}")
            if ev[select_metric] > float(state["best"]["value"]):
                best = {"params": jax.tree.map(jnp.copy, state["params"]),
                        "value": jnp.asarray(ev[select_metric], jnp.float32), "step": jnp.asarray(done, jnp.int32)}
                state = dict(state, best=jax.device_put(best, jax.tree.map(lambda _: replicated, best)))
        return state

    # ------------------------------------------------------------------ loop
    writer = _Writer(workdir)
    start = int(state["step"])
    progress = None
    if cfg.train.progress and jax.process_index() == 0 and start < steps:
        from tqdm import tqdm
        progress = tqdm(total=steps, initial=start, desc="train", dynamic_ncols=True)
    t_last, step_last = time.time(), start
    pending = None
    halted = False
    for step in range(start, steps):
        if cfg.quantizer.kmeans_init and sizes and step == kmeans_step:
            state = kmeans_init(state)
        local = next(train_iter)
        check_batch(local, step)
        batch = {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(local[k]))
                 for k in model_keys}
        state, metrics = step_fn(state, batch, constants)
        done = step + 1
        if done % cfg.train.log_every == 0 or done == steps:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            bad = [k for k, v in m.items() if not np.isfinite(v)]
            if bad:
                raise FloatingPointError(f"step {done}: non-finite {bad}; no checkpoint written for this step")
            now = time.time()
            m["rows_per_s"] = (done - step_last) * cfg.train.batch_size / max(now - t_last, 1e-9)
            t_last, step_last = now, done
            writer.write(done, "train", m)
            if progress is not None:
                progress.set_postfix(loss=f"{m['loss']:.3f}", rows_s=f"{m['rows_per_s']:.0f}")
        if progress is not None:
            progress.update(1)
        if done % cfg.train.eval_every == 0 or done == steps:
            state = evaluate(state, done, writer)
        if done % cfg.train.checkpoint_every == 0 or done == steps or done == cfg.train.halt_after_step:
            checkpoint.save(mngr, done, state, train_iter, force=True)
        if done == cfg.train.halt_after_step:
            halted = True
            break
    mngr.wait_until_finished()
    if progress is not None:
        progress.close()
    if halted:
        log(f"halted after step {cfg.train.halt_after_step} (config train.halt_after_step); rerun to resume")
        writer.close()
        return {"halted_at": cfg.train.halt_after_step}

    # ------------------------------------------------------------------ tokens and report
    params = state["params"]
    summary = {}
    if select_metric:
        params = state["best"]["params"]
        summary["selected"] = {"metric": select_metric, "value": float(state["best"]["value"]),
                               "step": int(state["best"]["step"])}
    if sizes:
        codes, continuous, residuals = encode_users(params)
        codes_by_view = nearest_by_view = _split_views(codes, levels)
        if hasattr(task, "finalize_codes"):  # e.g. the item tokenizer's collision-free last level
            codes_by_view = task.finalize_codes(params, codes_by_view, residuals)
        rel_err = {}
        for view, r in residuals.items():
            z = r[:, 0]
            z_hat = np.asarray(rq.decode_codes(jnp.asarray(codes_by_view[view]), params[f"codebooks_{view}"]))
            rel_err[view] = float(np.sum((z - z_hat) ** 2) / max(np.sum(z ** 2), 1e-12))
        summary.update(report.summarize(codes_by_view, sizes, continuous.shape[1], rel_err, task.labels))
    if hasattr(task, "final_report"):
        codes_kw = {"nearest": nearest_by_view, "exported": codes_by_view} if sizes else {}
        summary["test"] = task.final_report(params, constants, workdir, **codes_kw)
    summary["steps"] = steps
    summary["wall_seconds"] = time.time() - t_start
    if jax.process_index() == 0:
        if sizes:
            task.write_outputs(workdir, codes_by_view, continuous)
            np.savez(os.path.join(workdir, "codebooks.npz"),
                     **{view: np.asarray(params[f"codebooks_{view}"]) for view in sizes})
        report.write_json(os.path.join(workdir, "summary.json"), summary)
        writer.write(steps, "final", {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        if sizes:
            report.plot_run(os.path.join(workdir, "training.png"), os.path.join(workdir, "metrics.jsonl"),
                            codes_by_view, sizes)
    writer.close()
    log(_summary_text(summary, workdir))
    return summary


def _split_views(codes: np.ndarray, levels: dict[str, int]) -> dict[str, np.ndarray]:
    """Codes [U, Σ levels] → {view: [U, levels]}, in the order of the task's stacks."""
    out, start = {}, 0
    for view, n in levels.items():
        out[view] = codes[:, start: start + n]
        start += n
    return out


def _code_metrics(by_view: dict[str, np.ndarray], sizes) -> dict:
    first = next(iter(by_view))
    out = {f"collision_rate_{first}": report.collision_rate(by_view[first])}
    for view, c in by_view.items():
        u = report.code_usage(c, sizes[view])
        for level, (used, ppl) in enumerate(zip(u["usage"], u["perplexity"])):
            out[f"usage_{view}_{level}"] = used
            out[f"perplexity_{view}_{level}"] = ppl
    return out


def _summary_text(summary: dict, workdir: str) -> str:
    lines = [f"done in {summary['wall_seconds']:.0f}s; outputs in {workdir}"]
    if "selected" in summary:
        lines.append(f"  selected the step-{summary['selected']['step']} parameters by "
                     f"{summary['selected']['metric']} = {summary['selected']['value']:.4f}")
    if "test" in summary:
        lines.append("  test: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()
                                            if isinstance(v, (int, float))))
    if "views" not in summary:
        return "\n".join(lines)
    lines.append(f"  {summary['rows']} rows tokenized")
    for view, s in summary["views"].items():
        usage = " ".join(f"{u:.0%}" for u in s["usage"])
        ppl = " ".join(f"{p:.0f}" for p in s["perplexity"])
        lines.append(f"  {view:>9}: code usage per level {usage}; perplexity {ppl}; "
                     f"relative quantization error {s['relative_quantization_error']:.3f}")
    lines.append(f"  collision rate ({summary['primary_view']} codes): {summary['collision_rate']:.2%}; "
                 f"bytes/{'item' if summary['primary_view'] == 'item' else 'user'} {summary['bytes_per_user_tokens']:.1f} as tokens vs "
                 f"{summary['bytes_per_user_float32']} as float32 ({summary['compression_x']:.0f}x smaller)")
    if "purity_first_code" in summary:
        lines.append(f"  purity of the first {summary['primary_view']} code w.r.t. planted types: "
                     f"{summary['purity_first_code']:.3f}")
    return "\n".join(lines)


class _Writer:
    """Metrics to JSONL and TensorBoard, from process 0 only."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.active:
            return
        self.jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.active:
            self.jsonl.close()
            self.tb.close()
