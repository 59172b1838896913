"""Where a step's batch comes from.

Example rows that fit in memory (``data.device_mb``; the item table, the per-user examples of
these data sets, the synthetic users) live on the devices, and each step draws its batch there
inside the compiled step: no per-step host→device copy and no per-step read. The order is the
one a shuffled, repeated, batched stream gives: every epoch is a fresh permutation of the rows
(seeded), cut into ``rows // batch_size`` batches (the remainder of an epoch is left out, a
different one each epoch). The permutation of the current epoch is part of the train state
(``state["data"]``), so a checkpoint resumes with the very next batch; it is recomputed on device
once per epoch.

Larger data stream through grain from the array_record files (``u2qt/data/pipeline.py``), with
the iterator's position saved in the checkpoint; ``use_device`` decides which, by size.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from u2qt.errors import NonFiniteError

DATA_STREAM = 0x5EED  # folded into the seed: the data order's own key


def nbytes(examples: dict, keys) -> int:
    """Bytes of the example arrays; streamed columns (``u2qt/data/stream.py``) say theirs unread."""
    return sum(int(examples[k].nbytes) if hasattr(examples[k], "nbytes") else np.asarray(examples[k]).nbytes
               for k in keys)


def use_device(examples: dict, keys, limit_mb: float) -> bool:
    """Whether the model's example arrays fit the on-device budget (``data.device_mb``)."""
    return nbytes(examples, keys) <= limit_mb * 2**20


def nonfinite_rows(value) -> np.ndarray:
    """Indices of the rows of a float array [N, ...] that hold NaN/Inf (none for other dtypes)."""
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.floating):
        return np.zeros((0,), np.int64)
    return np.flatnonzero(~np.isfinite(value.reshape(len(value), -1)).all(1))


def check_finite(arrays: dict, ids: list[str] | None = None) -> None:
    """Non-finite numbers anywhere in the example rows stop the run before training, naming
    the key and the first rows that hold them (with their ids when the rows have ids)."""
    for key, value in arrays.items():
        rows = nonfinite_rows(value)
        if len(rows):
            named = [ids[r] for r in rows[:5]] if ids is not None else rows[:5].tolist()
            raise NonFiniteError(f"example key {key!r} holds NaN/Inf in {len(rows)} rows, e.g. rows "
                                     f"{rows[:5].tolist()}" + (f" (ids {named})" if ids is not None else ""))


class DeviceBatches:
    """Rows [N, ...] on the devices; ``draw`` is called inside the compiled step."""

    def __init__(self, examples: dict, keys, batch_size: int, seed: int, placement):
        host = {k: np.asarray(examples[k]) for k in keys}
        self.rows = len(next(iter(host.values())))
        # An epoch shorter than a batch is the table repeated until it holds one.
        self.tiles = -(-batch_size // self.rows)
        self.batch_size = batch_size
        self.per_epoch = self.rows * self.tiles // batch_size
        self.seed = seed
        self.placement = placement
        self.arrays = placement.replicate(host)  # from the host: every process holds the same rows

    def initial_state(self) -> dict:
        """No epoch drawn yet: the first step draws epoch 0's permutation."""
        return {"epoch": jnp.full((), -1, jnp.int32), "order": jnp.zeros((self.rows * self.tiles,), jnp.int32)}

    def draw(self, arrays: dict, data_state: dict, step, seed=None) -> tuple[dict, dict]:
        """(the batch of ``step``, the data state after it); ``seed``: the run's (traced), else the
        one given at construction."""
        epoch = (step // self.per_epoch).astype(jnp.int32)
        n = self.rows * self.tiles
        key = jax.random.fold_in(jax.random.key(self.seed if seed is None else seed), DATA_STREAM)

        def permute():  # one sort of random bits: half the cost of jax.random.permutation's rounds
            bits = jax.random.bits(jax.random.fold_in(key, epoch), (n,), jnp.uint32)
            return (jnp.argsort(bits) % self.rows).astype(jnp.int32)

        order = jax.lax.cond(epoch == data_state["epoch"], lambda: data_state["order"], permute)
        start = (step % self.per_epoch) * self.batch_size
        index = jax.lax.dynamic_slice_in_dim(order, start, self.batch_size)
        batch = {k: jnp.take(v, index, axis=0) for k, v in arrays.items()}
        batch = jax.lax.with_sharding_constraint(batch, jax.tree.map(lambda _: self.placement.batch, batch))
        return batch, {"epoch": epoch, "order": order}


def with_device_batches(train_step, batches: DeviceBatches):
    """The train step with its batch drawn on device: step(state, arrays, constants). The step
    itself is unchanged (this only wraps it), so what trains is what the benchmarks time."""

    def step(state, arrays, constants):
        seed = constants["hparams"]["seed"] if "hparams" in constants else None
        batch, data_state = batches.draw(arrays, state["data"], state["step"], seed)
        return train_step(dict(state, data=data_state), batch, constants)

    return step
