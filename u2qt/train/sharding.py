"""Where arrays live: the mesh, and moving batches between the host and the devices.

One ``data`` mesh axis over all devices: batches are split over it, parameters are replicated.
The same code serves one process or many (each process contributes its slice of a global batch).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


class Placement:
    """The run's mesh and the two shardings it uses, with host ↔ device moves of batches."""

    def __init__(self, batch_size: int):
        self.devices = jax.devices()
        self.mesh = jax.make_mesh((len(self.devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch = NamedSharding(self.mesh, P("data"))
        self.batch_size = batch_size

    def replicate(self, tree):
        return jax.device_put(tree, jax.tree.map(lambda _: self.replicated, tree))

    def to_device(self, host_batch: dict, keys, batch_size: int | None = None) -> dict:
        """A global batch that every process holds whole → a batch sharded over "data"; each
        process contributes its own slice."""
        count, index = jax.process_count(), jax.process_index()
        share = (batch_size or self.batch_size) // count
        return {k: jax.make_array_from_process_local_data(self.batch, np.asarray(v[index * share:(index + 1) * share]))
                for k, v in host_batch.items() if k in keys}

    def local_to_device(self, local_batch: dict, keys) -> dict:
        """This process's slice of a global batch → the batch sharded over "data"."""
        return {k: jax.make_array_from_process_local_data(self.batch, np.asarray(local_batch[k])) for k in keys}

    @staticmethod
    def to_host(x) -> np.ndarray:
        if jax.process_count() == 1:
            return np.asarray(x)
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
