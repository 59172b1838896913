"""Runs an assignment under ``jax.shard_map`` over the data axis, codebook replicated.

XLA cannot partition a Pallas custom call: left to GSPMD it gathers x onto every device. Here each
device assigns its own rows; outputs come back sharded like x's rows. Every mesh axis is manual
inside the map, so along axes other than ``axis`` the work is replicated (x is expected to be
sharded over ``axis`` only, as in data parallelism).
"""
from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import AbstractMesh, Mesh


def _axis_size(mesh, axis) -> int:
    names = axis if isinstance(axis, tuple) else (axis,)
    size = 1
    for name in names:
        size *= mesh.shape[name]
    return size


def _has_axis(mesh, axis) -> bool:
    names = axis if isinstance(axis, tuple) else (axis,)
    return mesh is not None and not mesh.empty and all(name in mesh.axis_names for name in names)


def resolve_mesh(mesh: Mesh | AbstractMesh | None, axis) -> Mesh | AbstractMesh | None:
    """The mesh to shard over, or None to run unsharded.

    An explicit ``mesh`` must have ``axis``. Otherwise the ambient mesh (``jax.set_mesh``) is used if
    it has ``axis`` with more than one device and we are not already inside a manual region.
    """
    if mesh is not None:
        if not _has_axis(mesh, axis):
            raise ValueError(f"mesh {mesh.axis_names} has no axis {axis!r}")
        return mesh if _axis_size(mesh, axis) > 1 else None
    ambient = jax.sharding.get_abstract_mesh()
    if not _has_axis(ambient, axis) or _axis_size(ambient, axis) == 1:
        return None
    if getattr(ambient, "manual_axes", ()):  # already inside shard_map: x is local
        return None
    return ambient


def over_data(fn: Callable, x: jax.Array, codebook: jax.Array, *, mesh=None, axis="data"):
    """fn(x, codebook) -> outputs with leading dim N, run per data shard of x's rows."""
    mesh = resolve_mesh(mesh, axis)
    if mesh is None:
        return fn(x, codebook)
    size = _axis_size(mesh, axis)
    if x.shape[0] % size:
        raise ValueError(f"N={x.shape[0]} rows do not split over {size} devices of axis {axis!r}")
    rows = jax.P(axis)
    # check_vma=False: pallas_call outputs carry no varying-manual-axes annotation.
    return jax.shard_map(fn, mesh=mesh, in_specs=(rows, jax.P()), out_specs=rows,
                         check_vma=False)(x, codebook)
