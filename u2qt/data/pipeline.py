"""The grain input pipeline: per-user examples → batches of numpy arrays.

A source is anything with `__len__` and `__getitem__(i) -> {key: np.ndarray}`: the TFDS data source
of `tfds_builder.build_data_source`, or `ArraySource` over the in-memory arrays of `build_examples`.

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
        idx = np.asarray(indices, dtype=np.int64)
        taken = {k: v[idx] for k, v in self._arrays.items()}  # one gather per key, not per element
        return [{k: v[j] for k, v in taken.items()} for j in range(len(idx))]


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
    ds = (
        grain.MapDataset.source(source)
        .shuffle(seed=seed)  # a different permutation in every epoch (seed + epoch)
        .repeat()
    )
    # Batches of B/P consecutive examples; process p takes every P-th from the p-th: its block of
    # each global batch. Both steps are lazy: only this process's examples are ever read.
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)[process_index::process_count]
    return iter(ds.to_iter_dataset(_read_options(num_threads, prefetch)))


def _pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    n = len(next(iter(batch.values())))
    out = {k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    out["valid"] = np.arange(batch_size) < n
    return out


def in_order_batches(arrays: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """All rows once, in order, in batches of exactly `batch_size`; the last one is padded with
    zeros, and the boolean key `valid` marks the real rows (for export and evaluation)."""
    n = len(next(iter(arrays.values())))
    for start in range(0, n, batch_size):
        yield _pad_batch({k: np.asarray(v[start:start + batch_size]) for k, v in arrays.items()}, batch_size)

