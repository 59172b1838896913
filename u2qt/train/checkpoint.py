"""Orbax checkpoints holding the train state and the data iterator's state together.

Saves are atomic (Orbax writes to a temporary directory and renames it when complete), so a run
killed mid-save leaves the previous checkpoint as the latest and nothing half-written is restored.
"""
from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp


def manager(directory: str, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter, *, force: bool = False) -> None:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            data_iter=grain.checkpoint.CheckpointSave(data_iter)),
              force=force)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, data_iter):
    """(state, step) from the newest complete checkpoint, or (None, None) if there is none.

    ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings: arrays come back
    laid out as the running job wants them, never gathered on one device first.
    """
    step = mngr.latest_step()
    if step is None:
        return None, None
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
    return restored["state"], step


def abstract_like(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
