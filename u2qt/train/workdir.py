"""A run's directory: its resolved config (a rerun resumes only the same run), the lock that
keeps a second run out, its metrics log (JSONL and TensorBoard, from process 0 only), and the
persistent cache of compiled programs."""
from __future__ import annotations

import json
import os
import socket
import time

import jax

from u2qt import config as config_lib
from u2qt import files

RESUME_IGNORED = ("train.progress", "train.halt_after_step")


def enable_compilation_cache(path: str | None = None) -> None:
    """Persist compiled programs (default ~/.cache/u2qt/jax, or $U2QT_JAX_CACHE) so a rerun,
    a resume or a second config of the same shapes skips XLA compilation."""
    path = path or os.environ.get("U2QT_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "u2qt", "jax")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _flat(cfg_dict: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg_dict.items():
        if isinstance(v, dict):
            out.update(_flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def prepare_workdir(cfg, workdir: str) -> None:
    """Saves the resolved config; refuses to resume a workdir that holds a different run."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    current = json.loads(config_lib.to_json(cfg))
    if os.path.exists(path):
        saved = json.load(open(path))
        a, b = _flat(saved), _flat(current)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_IGNORED)
        if diff:
            raise config_lib.ConfigError(
                f"{workdir} holds a run with a different config (keys {diff}); use a new --workdir "
                f"or the same config to resume")
    files.write_json(path, current)


LOCK = "run.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def lock_workdir(workdir: str) -> str:
    """Takes ``<workdir>/run.lock`` (pid, host, start time) for this process and returns its path;
    refuses when a live run holds it. A lock left by a run that died on this host (its pid is
    gone) is taken over. Remove it with ``release_workdir``."""
    path = os.path.join(workdir, LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.load(open(path))
            except (OSError, ValueError):
                owner = {}
            stale = owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _alive(owner["pid"])
            if not stale:
                raise config_lib.ConfigError(
                    f"{workdir} is in use by the run of pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
                    f"(since {owner.get('since', '?')}); wait for it to end, or delete {path} if that run is gone")
            os.remove(path)  # its owner died: take it over
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise config_lib.ConfigError(f"{path}: another run took the lock at the same moment; try again")


def release_workdir(path: str) -> None:
    try:
        if json.load(open(path)).get("pid") == os.getpid():
            os.remove(path)
    except (OSError, ValueError):
        pass


class MetricsWriter:
    """Metrics to ``metrics.jsonl`` and TensorBoard, from process 0 only.

    ``resume_step``: the step the run resumes from (0 for a fresh start). Rows a killed run wrote
    after its checkpoint (and the end-of-run rows of a finished run that is reported again) are
    dropped first, so the log never holds a step twice."""

    def __init__(self, workdir: str, resume_step: int = 0):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(path):
            keep = []
            for line in open(path):
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if row.get("step", 0) < resume_step or (row.get("step") == resume_step
                                                         and row.get("split") in ("train", "eval")):
                    keep.append(json.dumps(row) + "\n")
            files.write_text(path, "".join(keep))
        self.jsonl = open(path, "a")
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.active:
            return
        self.jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.active:
            self.jsonl.close()
            self.tb.close()
