"""The grain input pipeline: per-user examples → batches of numpy arrays.

A source is anything with `__len__` and `__getitem__(i) -> {key: np.ndarray}`: the TFDS data source
of `tfds_builder.build_data_source`, `ArraySource` over the in-memory arrays of `build_examples`, or
the streamed files' `stream.RowSource`; a source with `read_batch(indices) -> {key: [n, ...]}` (or
`__getitems__`) is read one batch per call.

Training (`make_train_iterator`): the whole data set is shuffled with the seed, differently in each
epoch, and repeated forever; global step s takes the next `global_batch_size` (B) examples of that
stream, and process p of P reads only its block of them, examples [p·B/P, (p+1)·B/P) of the batch
(the rows its devices hold, `u2qt/train/sharding.py`). Processes therefore read disjoint examples,
and their blocks side by side are exactly the single-process global batch, in order. The iterator's
state (`get_state`/`set_state`, or orbax with `grain.checkpoint.CheckpointSave/CheckpointRestore`)
is one position in that stream, so a restored run continues with the very next batch.

In order (`in_order_batches`): rows already in memory, once each, in padded fixed-size batches,
for encoding every row (export, k-means, evaluation).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import grain
import numpy as np


class ArraySource:
    """Random access to stacked arrays (leading dim = examples), e.g. the output of `build_examples`."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"arrays must share their leading dimension, got {({k: len(v) for k, v in arrays.items()})}")
        self._arrays = arrays
        self._len = sizes.pop()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self._arrays.items()}

    def __getitems__(self, indices) -> list[dict[str, np.ndarray]]:
        taken = self.read_batch(indices)
        return [{k: v[j] for k, v in taken.items()} for j in range(len(indices))]

    def read_batch(self, indices) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        return {k: v[idx] for k, v in self._arrays.items()}  # one gather per key, not per element


def _rows(source, indices) -> dict[str, np.ndarray]:
    """The rows at ``indices``, stacked: one batched read where the source has one (``read_batch``:
    the streamed files, whose random reads are slow one by one), else one ``__getitems__``."""
    read = getattr(source, "read_batch", None)
    if read is not None:
        return read(indices)
    indices = [int(i) for i in indices]
    rows = source.__getitems__(indices) if hasattr(source, "__getitems__") else [source[i] for i in indices]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)


def make_train_iterator(
    source,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 4,
    prefetch: int = 8,
) -> grain.DatasetIterator:
    """Infinite iterator of this process's blocks of the global batches: {key: array[global_batch_size //
    process_count, ...]}."""
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if len(source) == 0:
        raise ValueError("the source is empty")
    # The stream is shuffled and batched as indices (the same permutation as shuffling the source
    # itself); each batch of indices is then read at once (``_rows``). Reading a batch in one call
    # matters for the streamed array_record files: grain's batch reads element by element.
    ds = (
        grain.MapDataset.range(len(source))
        .shuffle(seed=seed)  # a different permutation in every epoch (seed + epoch)
        .repeat()
    )
    # Batches of B/P consecutive examples; process p takes every P-th from the p-th: its block of
    # each global batch. All steps are lazy: only this process's examples are ever read.
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)[process_index::process_count]
    ds = ds.map(functools.partial(_rows, source))
    return iter(ds.to_iter_dataset(_read_options(num_threads, prefetch)))


def _pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    n = len(next(iter(batch.values())))
    out = {k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    out["valid"] = np.arange(batch_size) < n
    return out


def in_order_batches(arrays: dict[str, np.ndarray], batch_size: int, start: int = 0,
                     stop: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Rows [start, stop) (default: all) once, in order, in batches of exactly `batch_size`; the
    last one is padded with zeros, and the boolean key `valid` marks the real rows (for export
    and evaluation)."""
    n = len(next(iter(arrays.values())))
    stop = n if stop is None else min(stop, n)
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        yield _pad_batch({k: np.asarray(v[lo:hi]) for k, v in arrays.items()}, batch_size)

