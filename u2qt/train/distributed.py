"""Several processes on JAX's multi-controller runtime: start-up from launch flags or the
environment, and the few cross-process steps the loop takes.

One process per host (TPU pod slice, GPU node), per GPU, or several on one machine (CPU devices
with gloo collectives, for tests). Every process runs the same program on its own devices; the
workdir is shared storage that all of them see. Process 0 alone writes the workdir's files (lock,
config, fingerprint, metrics, tables, plots, summary); checkpoints are written by all of them
together (Orbax). With one process (the default) nothing here does any work.

Coordinator settings (launch settings, not config keys) come from flags, else from U2QT_* variables:
    --coordinator_address=HOST:PORT   U2QT_COORDINATOR_ADDRESS   process 0's address (a free port)
    --num_processes=N                 U2QT_NUM_PROCESSES
    --process_id=I                    U2QT_PROCESS_ID            0 .. N-1
    --distributed                     U2QT_DISTRIBUTED=1         detect all of them from the cluster
Any one of them starts the runtime; what is not given is detected by ``jax.distributed.initialize``
(Cloud TPU pod slices, SLURM, Open MPI, Kubernetes).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from u2qt import errors
from u2qt.errors import ConfigError

SETTINGS = {"coordinator_address": str, "num_processes": int, "process_id": int}
ENV_PREFIX = "U2QT_"
WAIT_MS = 4 * 3600 * 1000  # process 0 may embed every item text (or build TFDS files) while the others wait


def launch_settings(argv: list[str], environ=os.environ) -> tuple[dict | None, list[str]]:
    """(settings for ``initialize`` or None for a single process, argv without these flags)."""
    given, rest, detect = {}, [], environ.get(ENV_PREFIX + "DISTRIBUTED", "") not in ("", "0")
    args = iter(argv)
    for arg in args:
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name == "distributed" and not eq:
            detect = True
        elif name in SETTINGS:
            if not eq:
                value = next(args, None)
                if value is None:
                    raise ConfigError(f"flag --{name} needs a value")
            given[name] = value
        else:
            rest.append(arg)
    for name in SETTINGS:
        if name not in given and environ.get(ENV_PREFIX + name.upper()):
            given[name] = environ[ENV_PREFIX + name.upper()]
    settings = {}
    for name, value in given.items():
        try:
            settings[name] = SETTINGS[name](value)
        except ValueError:
            raise ConfigError(f"--{name}={value!r} (or {ENV_PREFIX}{name.upper()}) must be an integer") from None
    if not settings and not detect:
        return None, rest
    n, i = settings.get("num_processes"), settings.get("process_id")
    if n is not None and (n < 1 or i is not None and not 0 <= i < n):
        raise ConfigError(f"--process_id={i} must be in [0, --num_processes={n})")
    return settings, rest


def initialize(settings: dict) -> None:
    """Joins the job (once per process: a later call, e.g. a second run, keeps the first); before
    anything touches a device. Cross-process collectives on CPU use gloo."""
    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**settings)
    if jax.default_backend() == "cpu":
        # A CPU program that spans processes, read back from the persistent compilation cache,
        # fails at its first device → host copy (jax 0.10.2); such runs compile afresh.
        jax.config.update("jax_enable_compilation_cache", False)


def is_main() -> bool:
    return jax.process_index() == 0


def to_host(x) -> np.ndarray:
    """A (possibly sharded over several processes) array, whole, on every process."""
    if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def from_main(x: np.ndarray) -> np.ndarray:
    """Process 0's value of a small host array, on every process (decisions read from files
    that only process 0 writes, so every process runs the same collectives)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(x)))


_rounds = iter(range(1 << 62))


def main_first(fn, *, others: bool):
    """Process 0 runs ``fn`` first (file writes, cache builds); the others wait and get its error, if
    any, as their own (so no process is left waiting in a collective for one that has stopped);
    then, if ``others``, they run ``fn`` too (and find the caches it filled). Returns fn's result
    (None on processes that did not run it)."""
    if jax.process_count() == 1:
        return fn()
    from jax._src import distributed as jax_distributed  # the coordination service Orbax uses too
    client = jax_distributed.global_state.client
    key = f"u2qt/main_first/{next(_rounds)}"
    if is_main():
        try:
            result = fn()
        except BaseException as e:
            client.key_value_set(key, json.dumps({"kind": type(e).__name__, "message": str(e)}))
            raise
        client.key_value_set(key, "ok")
        return result
    outcome = client.blocking_key_value_get(key, WAIT_MS)
    if outcome != "ok":
        failed = json.loads(outcome)
        kind = getattr(errors, failed["kind"], None)
        if isinstance(kind, type) and issubclass(kind, errors.U2qtError):
            raise kind(failed["message"])  # the user's error: the same one line from every process
        raise RuntimeError(f"process 0 stopped with {failed['kind']}: {failed['message']}")
    return fn() if others else None
