"""The train step, at the top level so that the loop, the benchmarks and the tests run the same
one, and an outer loop (e.g. a federated trainer) can wrap it unchanged:

    state = init_state(task, tx, cfg, key, sample, constants)
    step = make_train_step(task, tx, cfg)
    state, metrics = step(state, batch, constants)

state = {"step", "params", "opt_state"} (+ "usage" for a tokenizer: the EMA of each stack's code
counts; + "best" when ``train.select_metric`` keeps the best parameters). One step: the task's loss
and its gradient, clipping and AdamW, then, for a tokenizer task only, codebook upkeep (usage EMA
and dead-code resets, ``u2qt/train/codebooks.py``).

Step inputs, not program constants: ``constants["hparams"]`` (``hparams(cfg)``: the learning
rate, the warm-up and run length of its schedule, the seed) when the caller passes it, as the
loop does. Runs that differ only in those (a sweep over learning rates or seeds, tests of other
lengths) then compile one step, and the persistent compilation cache serves the rest. Without it
(an outer loop that passes its own constants) the config's values are baked in, with the same
result.
"""
from __future__ import annotations

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from u2qt.tasks.core import Tokenizes
from u2qt.train import codebooks


# With train.epochs, the step counts of a config written for one data set must still fit a run of
# another length: each may take at most this share of the run (log_every at most 1/20 of it, so
# a short run still logs about 20 times).
FIT_SHARE = {"train.warmup_steps": 0.1, "quantizer.kmeans_at_step": 0.1, "train.log_every": 0.05,
             "train.eval_every": 0.25, "train.checkpoint_every": 0.5}


class InFlight:
    """Steps (or rounds) dispatched asynchronously, at most `limit` ahead of the host.

    JAX returns from a jitted call before the device has run it. A loop that only dispatches would
    count steps it has queued, not run, in its progress and would charge the queued work to
    whatever it times next (an evaluation); `add` each step's output and the host waits once the
    queue is longer than `limit`, so the device still has the next step queued.
    """

    def __init__(self, limit: int = 2):
        self.limit = limit
        self._queue = collections.deque()

    def add(self, out) -> None:
        self._queue.append(out)
        while len(self._queue) > self.limit:
            jax.block_until_ready(self._queue.popleft())

    def drain(self) -> None:
        """Wait for every queued step, e.g. before timing an evaluation."""
        while self._queue:
            jax.block_until_ready(self._queue.popleft())


def resolve_epochs(cfg, rows: int, log=print) -> None:
    """``train.epochs`` > 0: sets ``train.steps`` in ``cfg`` (in place: the task holds the same
    config) to that many passes over ``rows`` training rows, and shortens the step counts that
    would not fit such a run (see ``FIT_SHARE``). Every value it sets is logged, so the log says
    which schedule the run used. With ``train.epochs`` = 0 nothing changes."""
    t = cfg.train
    if not t.epochs:
        return
    steps = max(1, math.ceil(t.epochs * rows / t.batch_size))
    cfg.train.steps = steps
    changes = [f"train.steps={steps:,}"]
    for key, share in FIT_SHARE.items():
        family, name = key.split(".")
        if family not in cfg or (family == "quantizer" and not cfg.quantizer.kmeans_init):
            continue
        value, limit = cfg[family][name], max(1, int(steps * share))
        if value > limit:
            cfg[family][name] = limit
            changes.append(f"{key}={limit:,} (was {value:,})")
    log(f"schedule: train.epochs={t.epochs:g} over {rows:,} training rows at batch {t.batch_size:,} → "
        + ", ".join(changes))


def hparams(cfg) -> dict:
    """The numbers of ``cfg`` the train step reads from ``constants["hparams"]`` (see the module
    docstring)."""
    t = cfg.train
    return {"lr": np.float32(t.lr), "warmup_steps": np.int32(t.warmup_steps), "steps": np.int32(t.steps),
            "seed": np.int32(cfg.seed)}


def step_hparams(cfg, constants: dict) -> dict:
    """The step's hyper-parameters: the traced inputs when given, else the config's (constants)."""
    return constants.get("hparams") or hparams(cfg)


def learning_rate(count, lr, warmup_steps, steps):
    """Linear warm-up from 0 to ``lr`` over the warm-up, then cosine decay to 5% of ``lr`` at the
    last step (optax's ``warmup_cosine_decay_schedule``, with every number allowed to be traced).
    A run shorter than the warm-up still decays: the warm-up is cut to steps − 1."""
    warmup = jnp.minimum(warmup_steps, jnp.maximum(steps - 1, 0)).astype(jnp.float32)
    decay = jnp.maximum(steps, warmup + 1).astype(jnp.float32) - warmup
    c = jnp.asarray(count, jnp.float32)
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(c - warmup, decay) / decay))
    return jnp.where(c < warmup, lr * c / jnp.maximum(warmup, 1.0), lr * (0.95 * cosine + 0.05))


def scale_by_learning_rate(default: dict) -> optax.GradientTransformationExtraArgs:
    """optax's ``scale_by_learning_rate`` of ``learning_rate`` (the same state: the update count),
    its numbers read from the ``hparams`` the update is given, else from ``default``."""

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, *, hparams=None, **extra):
        del params, extra
        h = default if hparams is None else hparams
        step_size = -learning_rate(state.count, h["lr"], h["warmup_steps"], h["steps"])
        updates = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(cfg, task=None, kind: str = "adamw") -> optax.GradientTransformation:
    """Global-norm clipping and AdamW with warm-up and cosine decay (``learning_rate``). No weight
    decay on 1-D parameters (biases, norms) nor on a tokenizer's codebooks. The state is laid out
    as ``optax.adamw`` with a schedule lays it out (checkpoints of earlier runs restore).
    ``kind="sgd"``: clipping, then plain SGD at a constant ``train.lr`` (no state, no decay): the
    federated clients' other choice, whose server optimizer owns the schedule."""
    t = cfg.train
    if kind == "sgd":
        return optax.chain(optax.clip_by_global_norm(t.clip_norm), optax.scale(-t.lr))
    if kind != "adamw":
        raise ValueError(f"optimizer kind {kind!r}: expected 'adamw' or 'sgd'")

    def decay_mask(params):
        mask = jax.tree.map(lambda x: x.ndim > 1, params)
        if isinstance(task, Tokenizes):
            mask = task.with_codebooks(mask, {view: False for view in task.stacks})
        return mask

    adamw = optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(t.weight_decay, decay_mask),
                        scale_by_learning_rate(hparams(cfg)))
    return optax.chain(optax.clip_by_global_norm(t.clip_norm), adamw)


def init_state(task, tx, cfg, key, sample: dict, constants: dict) -> dict:
    params = task.init(key, sample, constants)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    if isinstance(task, Tokenizes):
        state["usage"] = codebooks.initial_usage(task, cfg)
    if cfg.train.select_metric:  # the parameters with the best validation score so far, kept with the state
        state["best"] = {"params": params, "value": jnp.full((), -jnp.inf, jnp.float32),
                         "step": jnp.zeros((), jnp.int32)}
    return state


def make_train_step(task, tx, cfg):
    """step(state, batch, constants) -> (state, metrics); pure, jittable, donatable."""
    tokenizer = isinstance(task, Tokenizes)

    def train_step(state, batch, constants):
        step = state["step"]
        h = step_hparams(cfg, constants)
        key = jax.random.fold_in(jax.random.key(h["seed"]), step)
        grad_fn = jax.value_and_grad(lambda p: task.loss(p, batch, constants, key, step), has_aux=True)
        (_, aux), grads = grad_fn(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"], hparams=h)
        params = optax.apply_updates(state["params"], updates)
        metrics = dict(aux["metrics"])
        new_state = dict(state, step=step + 1, params=params, opt_state=opt_state)
        if tokenizer:
            new_state, health = codebooks.upkeep(task, cfg, new_state, aux, step, key, h["steps"])
            metrics.update(health)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return new_state, metrics

    return train_step
