"""Batches drawn on the device: each epoch is a permutation of the rows, the order resumes
exactly from the train state, tables smaller than a batch work, and non-finite rows are named."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from u2qt.train import batches as batches_lib
from u2qt.train.sharding import Placement


def _draws(rows: int, batch_size: int, steps: int, seed=0, start_state=None, first=0):
    examples = {"x": np.arange(rows, dtype=np.int32), "v": np.arange(rows, dtype=np.float32)[:, None] * 2}
    b = batches_lib.DeviceBatches(examples, ("x", "v"), batch_size, seed, Placement(batch_size))
    draw = jax.jit(b.draw)
    state = b.initial_state() if start_state is None else start_state
    out, states = [], []
    for step in range(first, first + steps):
        batch, state = draw(b.arrays, state, jnp.int32(step))
        np.testing.assert_array_equal(np.asarray(batch["v"])[:, 0], 2 * np.asarray(batch["x"]))  # rows stay whole
        out.append(np.asarray(batch["x"]))
        states.append(state)
    return b, out, states


def test_each_epoch_is_a_fresh_permutation_of_the_rows():
    b, out, _ = _draws(rows=50, batch_size=8, steps=18)
    assert b.per_epoch == 6  # 50 // 8: two rows of each epoch are left out, different ones each time
    epochs = [np.concatenate(out[e * 6:(e + 1) * 6]) for e in range(3)]
    for e in epochs:
        assert len(e) == 48 and len(set(e.tolist())) == 48  # no row twice within an epoch
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])
    _, again, _ = _draws(rows=50, batch_size=8, steps=18)
    _, other_seed, _ = _draws(rows=50, batch_size=8, steps=6, seed=1)
    assert all(np.array_equal(a, c) for a, c in zip(out, again))  # seeded
    assert not np.array_equal(np.concatenate(out[:6]), np.concatenate(other_seed))


def test_the_order_resumes_exactly_from_the_saved_data_state():
    _, straight, states = _draws(rows=50, batch_size=8, steps=15)
    saved = jax.tree.map(np.asarray, states[8])  # as a checkpoint holds it, after step 8 (epoch 1)
    _, resumed, _ = _draws(rows=50, batch_size=8, steps=6, start_state=saved, first=9)
    for a, c in zip(straight[9:], resumed):
        np.testing.assert_array_equal(a, c)


def test_a_table_smaller_than_a_batch_is_repeated_to_fill_it():
    b, out, _ = _draws(rows=5, batch_size=12, steps=4)
    assert b.tiles == 3 and b.per_epoch == 1
    for batch in out:  # each epoch: the 5 rows 3 times over, shuffled, cut to one batch of 12
        counts = np.bincount(batch, minlength=5)
        assert batch.shape == (12,) and counts.max() <= 3 and (counts > 0).sum() >= 4
    assert set(np.concatenate(out).tolist()) == set(range(5))


def test_use_device_follows_the_size_budget():
    examples = {"a": np.zeros((1024, 256), np.float32), "ignored": np.zeros((10**6,), np.float32)}
    assert batches_lib.nbytes(examples, ("a",)) == 2**20
    assert batches_lib.use_device(examples, ("a",), 1.0) and not batches_lib.use_device(examples, ("a",), 0.5)


def test_non_finite_rows_are_named_before_training():
    x = np.ones((6, 3), np.float32)
    x[4, 1] = np.nan
    x[2, 0] = np.inf
    batches_lib.check_finite({"x": np.ones((6, 3), np.float32), "i": np.arange(6)})
    with pytest.raises(FloatingPointError, match=r"'x'.*2 rows.*\[2, 4\].*ids \['u2', 'u4'\]"):
        batches_lib.check_finite({"x": x}, [f"u{i}" for i in range(6)])
