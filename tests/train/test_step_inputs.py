"""The learning rate, schedule lengths and seed are inputs of the compiled train step
(``constants["hparams"]``): runs that differ only in them lower to the same program, the schedule is
optax's warm-up + cosine, and the optimizer state is laid out as ``optax.adamw``'s (checkpoints of
earlier runs restore)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, lower_train_step

from u2qt import config as config_lib
from u2qt.train.step import hparams, learning_rate, make_optimizer


def _cfg(**overrides):
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "default.py:runlocal"))
    for key, value in overrides.items():
        config_lib.apply_override(cfg, key, str(value))
    return cfg


@pytest.mark.parametrize("lr,warmup,steps", [(3e-3, 10, 100), (1e-3, 0, 40), (2e-3, 50, 20), (5e-4, 5, 6)])
def test_the_schedule_is_optax_warmup_cosine(lr, warmup, steps):
    w = min(warmup, max(steps - 1, 0))
    ref = optax.warmup_cosine_decay_schedule(0.0, lr, w, max(steps, w + 1), lr * 0.05)
    count = np.arange(0, steps + 5)
    ours = jax.jit(jax.vmap(lambda c: learning_rate(c, jnp.float32(lr), jnp.int32(warmup), jnp.int32(steps))))(count)
    np.testing.assert_allclose(ours, [ref(c) for c in count], rtol=1e-5, atol=1e-9)


def _lowered(cfg):
    lowered, task, tx, small, constants = lower_train_step(cfg, with_hparams=True)
    return lowered.as_text(), tx, small, task, constants


def test_runs_that_differ_in_lr_seed_or_length_lower_to_one_program(tmp_path):
    cache = {"data.cache_dir": str(tmp_path)}
    base, tx, small, task, constants = _lowered(_cfg(**cache))
    other = {"train.lr": 0.01, "seed": 3, "train.steps": 77, "train.warmup_steps": 9}
    assert _lowered(_cfg(**cache, **other))[0] == base
    # ... but not one that changes what is computed
    assert _lowered(_cfg(**cache, **{"quantizer.kmeans_at_step": 3}))[0] != base
    # The state is optax.adamw's with a schedule (clipping first), so earlier checkpoints restore.
    params = task.init(jax.random.key(0), small, constants)
    old = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 2, 10),
                                                                  weight_decay=0.01, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)))
    assert jax.tree.structure(tx.init(params)) == jax.tree.structure(old.init(params))


def test_the_traced_numbers_are_the_ones_used():
    """One update with the numbers given as inputs equals one with them built in (the fallback an
    outer loop without ``hparams`` gets), and a different learning rate changes it."""
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones((2,))}
    grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.full((2,), -0.25)}
    cfg = _cfg(**{"train.lr": 0.01, "train.warmup_steps": 0, "train.steps": 10})
    tx = make_optimizer(cfg)
    state = tx.init(params)
    built_in, _ = tx.update(grads, state, params)
    given, _ = jax.jit(lambda h: tx.update(grads, state, params, hparams=h))(
        {k: jnp.asarray(v) for k, v in hparams(cfg).items()})
    for k in params:
        np.testing.assert_allclose(given[k], built_in[k], rtol=1e-6)
    h = dict(hparams(cfg), lr=np.float32(0.02))
    doubled, _ = jax.jit(lambda h: tx.update(grads, state, params, hparams=h))(h)
    np.testing.assert_allclose(doubled["w"], 2 * built_in["w"], rtol=1e-5)
