"""The tiny U²QT set-up shared by tests/models and tests/tasks: the `configs/default.py:runlocal`
model on a hand-made batch of 6 users.

XLA compiles dominate the run time on CPU. Parameters come from `jax.eval_shape(module.init)`
(the real tree and shapes, nothing compiled) filled with numpy draws at initializer scale:
compiling the initializers would cost as much as the forward pass. Test jits compile at XLA
backend optimization level 0 (`jit_o0`): the arithmetic is the same and compiling takes about
half as long.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from u2qt.config import apply_override, load_config_file

CAT_SIZES = (3, 5)  # vocabulary size + 1 per field (id 0 = missing)
NUM_NUMERIC = 2
NUM_ITEMS = 12
MAX_EVENTS = 8
TEXT_DIM = 384
LENGTHS = (8, 5, 2, 1, 0, 3)  # includes users with one and with no events


def jit_o0(fn, **kwargs):
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


def config(**overrides):
    cfg = load_config_file(f"{REPO}/configs/default.py:runlocal")
    for key, value in overrides.items():
        apply_override(cfg, key, value)
    return cfg


def make_batch(seed=0, lengths=LENGTHS):
    rng = np.random.default_rng(seed)
    b = len(lengths)
    length = np.asarray(lengths, np.int32)
    valid_pos = np.arange(MAX_EVENTS)[None] < length[:, None]
    cat = np.stack([rng.integers(0, size, b) for size in CAT_SIZES], 1).astype(np.int32)
    cat[0] = 0  # all categorical fields missing
    num_mask = rng.integers(0, 2, (b, NUM_NUMERIC)).astype(np.float32)
    num_mask[1] = 1.0
    return {
        "user_index": np.arange(b, dtype=np.int32),
        "cat": cat,
        "num": (rng.standard_normal((b, NUM_NUMERIC)) * num_mask).astype(np.float32),
        "num_mask": num_mask,
        "items": np.where(valid_pos, rng.integers(1, NUM_ITEMS + 1, (b, MAX_EVENTS)), 0).astype(np.int32),
        "event_feats": (rng.standard_normal((b, MAX_EVENTS, 5)) * valid_pos[..., None]).astype(np.float32),
        "length": length,
    }


def make_item_text(seed=1):
    return np.random.default_rng(seed).standard_normal((NUM_ITEMS + 1, TEXT_DIM)).astype(np.float32)


def all_finite(tree):
    return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(tree)))


def init_params(module, *args, seed=0):
    """The parameters ``module.init`` would create (same tree, shapes, dtypes), without compiling
    its initializers: Dense kernels ~ N(0, 1/fan_in), LayerNorm scales 1, biases 0, every other
    table (embeddings, queries, codebooks) ~ N(0, 0.1²)."""
    shapes = jax.eval_shape(lambda key: module.init({"params": key}, *args), jax.random.key(0))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "bias":
            return np.zeros(leaf.shape, leaf.dtype)
        if name == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        std = 0.1
        if name == "kernel":  # attention's output kernel is [heads, head_dim, out]
            std = 1 / np.sqrt(np.prod(leaf.shape[:-1]) if path[-2].key == "out" else leaf.shape[0])
        return (std * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(lambda path, leaf: jnp.asarray(fill(path, leaf)), shapes)


# Module-scoped fixtures for the tests that import them (pytest registers imported fixtures).
@pytest.fixture(scope="module")
def cfg():
    return config()


@pytest.fixture(scope="module")
def model(cfg):
    from u2qt.models.user_tokenizer import U2QT, ModelSpec
    return U2QT(ModelSpec(CAT_SIZES, NUM_NUMERIC, NUM_ITEMS, MAX_EVENTS, TEXT_DIM), cfg)


@pytest.fixture(scope="module")
def params(model):
    from u2qt.tasks.user_tokenizer import full_view
    return init_params(model, full_view(make_batch()), make_item_text())

