"""Orbax checkpoints holding the train state and the data iterator's state together.

Saves are atomic (Orbax writes to a temporary directory and renames it when complete), so a run
killed mid-save leaves the previous checkpoint as the latest and nothing half-written is restored.
"""
from __future__ import annotations

import functools
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from u2qt.errors import STORAGE_ERRNOS, ConfigError, NonFiniteError, WorkdirError
from u2qt.train.workdir import run_once_options


@functools.cache
def _compiled_all_finite():  # made on first use: the options depend on the backend
    return jax.jit(_all_finite, compiler_options=run_once_options())


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def check_finite(state, step: int, last_saved: int | None) -> None:
    """Raises before a save when any float in the train state (parameters, optimizer moments,
    codebook usage) is NaN/Inf: such a checkpoint would become the resume point of every rerun.
    The check runs on device; only one boolean comes back. The best-so-far validation score
    starts at -inf before the first evaluation (a sentinel, not a poisoned value) and is skipped."""
    if "best" in state:
        state = dict(state, best={k: v for k, v in state["best"].items() if k != "value"})
    if not bool(_compiled_all_finite()(state)):
        keep = (f"the checkpoint of step {last_saved} stays the resume point" if last_saved is not None
                else "no checkpoint was written")
        raise NonFiniteError(f"step {step}: the train state holds NaN/Inf, so it was not saved; {keep}. "
                             f"Lower train.lr or check the data")


def improves(ev: dict, metric: str, best_value) -> bool:
    """Whether the evaluation ``ev`` beats the best-so-far copy's score ``best_value`` on
    ``metric`` (``train.select_metric``), compared as the float32 the copy stores, so a tie keeps
    the earlier copy. A metric the evaluation does not produce is refused by name."""
    if metric not in ev:
        raise ConfigError(f"config train.select_metric={metric!r} is not an eval metric; known: {sorted(ev)}")
    return float(np.float32(ev[metric])) > float(best_value)


def due(done: int, last: int, train) -> bool:
    """A checkpoint is written every ``train.checkpoint_every`` steps (rounds, for the federated
    trainer), after the last one and where the run halts (``train.halt_after_step``)."""
    return done % train.checkpoint_every == 0 or done == last or done == train.halt_after_step


def halted(train, unit: str, writer, log) -> dict:
    """The summary of a run stopped by ``train.halt_after_step`` after its checkpoint."""
    log(f"halted after {unit} {train.halt_after_step} (config train.halt_after_step); rerun to resume")
    writer.close()
    return {"halted_at": train.halt_after_step}


def manager(directory: str, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter=None, *, force: bool = False) -> None:
    """The state (which holds the data order when batches are drawn on device) and, when the
    data stream through grain, the iterator's position."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, data_iter=None):
    """(state, step) from the newest complete checkpoint, or (None, None) if there is none.

    ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings: arrays come back
    laid out as the running job wants them, never gathered on one device first.
    """
    step = mngr.latest_step()
    if step is None:
        return None, None
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, OSError, KeyError) as e:  # shapes or structure differ, or files are damaged
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            raise
        raise WorkdirError(f"cannot restore the checkpoint of step {step} in {mngr.directory}: it does not fit "
                           f"this run's model or its files are damaged ({str(e).splitlines()[0][:300]}); move "
                           f"that step's folder away to resume from an earlier one, or use a new --workdir") from e
    return restored["state"], step


def abstract_like(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
