"""The train step, at the top level so that the loop, the benchmarks and the tests run the same
one, and an outer loop (e.g. a federated trainer) can wrap it unchanged:

    state = init_state(task, tx, cfg, key, sample, constants)
    step = make_train_step(task, tx, cfg)
    state, metrics = step(state, batch, constants)

state = {"step", "params", "opt_state"} (+ "usage" for a tokenizer: the EMA of each stack's code
counts; + "best" when ``train.select_metric`` keeps the best parameters). One step: the task's loss
and its gradient, clipping and AdamW, then, for a tokenizer task only, codebook upkeep (usage EMA
and dead-code resets, ``u2qt/train/codebooks.py``).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from u2qt.tasks.core import Tokenizes
from u2qt.train import codebooks


# With train.epochs, the step counts of a config written for one data set must still fit a run of
# another length: each may take at most this share of the run (log_every at most 1/20 of it, so
# a short run still logs about 20 times).
FIT_SHARE = {"train.warmup_steps": 0.1, "quantizer.kmeans_at_step": 0.1, "train.log_every": 0.05,
             "train.eval_every": 0.25, "train.checkpoint_every": 0.5}


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


def make_optimizer(cfg, task=None) -> optax.GradientTransformation:
    """Global-norm clipping and AdamW with warm-up and cosine decay. No weight decay on 1-D
    parameters (biases, norms) nor on a tokenizer's codebooks."""
    t = cfg.train
    warmup = min(t.warmup_steps, max(t.steps - 1, 0))  # a run shorter than the warm-up still decays
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.lr, warmup, max(t.steps, warmup + 1), t.lr * 0.05)

    def decay_mask(params):
        mask = jax.tree.map(lambda x: x.ndim > 1, params)
        if isinstance(task, Tokenizes):
            mask = task.with_codebooks(mask, {view: False for view in task.stacks})
        return mask

    return optax.chain(optax.clip_by_global_norm(t.clip_norm),
                       optax.adamw(schedule, weight_decay=t.weight_decay, mask=decay_mask))


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
    root_key = jax.random.key(cfg.seed)
    tokenizer = isinstance(task, Tokenizes)

    def train_step(state, batch, constants):
        step = state["step"]
        key = jax.random.fold_in(root_key, step)
        grad_fn = jax.value_and_grad(lambda p: task.loss(p, batch, constants, key, step), has_aux=True)
        (_, aux), grads = grad_fn(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = dict(aux["metrics"])
        new_state = dict(state, step=step + 1, params=params, opt_state=opt_state)
        if tokenizer:
            new_state, health = codebooks.upkeep(task, cfg, new_state, aux, step, key)
            metrics.update(health)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return new_state, metrics

    return train_step
