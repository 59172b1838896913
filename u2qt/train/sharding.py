"""Where arrays live: the mesh, and moving batches between the host and the devices.

One ``data`` mesh axis over all devices: batches are split over it, parameters are replicated.
The same code serves one process or many: the mesh lists the devices process by process, so
process p of P holds rows [p·B/P, (p+1)·B/P) of every global batch of B rows, and each process
builds only those rows (``process_rows``); the global batch is the one a single process builds.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from u2qt.train import distributed


class Placement:
    """The run's mesh and the two shardings it uses, with host ↔ device moves of batches."""

    def __init__(self, batch_size: int):
        self.devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        self.mesh = jax.make_mesh((len(self.devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                                  devices=self.devices)
        self.replicated = NamedSharding(self.mesh, P())
        self.batch = NamedSharding(self.mesh, P("data"))
        self.batch_size = batch_size

    def replicate(self, tree):
        return jax.device_put(tree, jax.tree.map(lambda _: self.replicated, tree))

    def process_rows(self, batch_size: int | None = None) -> slice:
        """The rows of a global batch that this process's devices hold (and that it builds)."""
        size = batch_size or self.batch_size
        share = size // jax.process_count()
        index = jax.process_index()
        held = sorted(i[0].indices(size)[:2] for i in self.batch.addressable_devices_indices_map((size,)).values())
        if held[0][0] != index * share or held[-1][1] != (index + 1) * share:  # the mesh's order, checked
            raise AssertionError(f"process {index} holds rows {held}, not [{index * share}, {(index + 1) * share})")
        return slice(index * share, (index + 1) * share)

    def to_device(self, host_batch: dict, keys, batch_size: int | None = None) -> dict:
        """A global batch that every process holds whole → a batch sharded over "data"; each
        process contributes its own rows."""
        rows = self.process_rows(batch_size)
        return {k: jax.make_array_from_process_local_data(self.batch, np.asarray(v[rows]))
                for k, v in host_batch.items() if k in keys}

    def local_to_device(self, local_batch: dict, keys) -> dict:
        """This process's slice of a global batch → the batch sharded over "data"."""
        return {k: jax.make_array_from_process_local_data(self.batch, np.asarray(local_batch[k])) for k in keys}

    to_host = staticmethod(distributed.to_host)
