"""A run's directory: its resolved config and a fingerprint of its data (a rerun resumes only the
same run on the same data), the lock that keeps a second run out, its metrics log (JSONL and
TensorBoard, from process 0 only), and the persistent cache of compiled programs."""
from __future__ import annotations

import json
import os
import socket
import time

import jax

from u2qt import config as config_lib
from u2qt import files
from u2qt.errors import WorkdirError
from u2qt.train import distributed

# Keys a resumed run may change: they do not change what is trained (mesh.model only lays the
# same state out over the devices otherwise: a checkpoint restores onto any layout;
# quantizer.health_rows only sizes the code-health sample of each evaluation).
RESUME_IGNORED = ("train.progress", "train.halt_after_step", "train.finetune_changed_data", "data.strict",
                  "mesh.model", "quantizer.health_rows")
# Keys added after runs were saved without them: absent from a saved config means this value.
ADDED_LATER = {"mesh.model": 1, "data.stream_chunk_users": 0,
               # the federated server update before it had options: plain FedAvg
               "federated.server_optimizer": "sgd", "federated.server_lr": 1.0, "federated.server_momentum": 0.9,
               "federated.server_b2": 0.99, "federated.server_tau": 1e-3,
               # the server's lr schedule and the clients' optimizer before they had options
               "federated.server_schedule": "constant", "federated.server_warmup_rounds": 0,
               "federated.client_optimizer": "adamw",
               # the group experts' server step before it had its own scale
               "federated.group_lr_scale": 1.0,
               # MRFF's routing and experts before they had options: the paper's
               "model.route_on": "user", "model.expert_base": "none"}
FINGERPRINT = "data_fingerprint.json"


def enable_compilation_cache(path: str | None = None) -> None:
    """Persist compiled programs (default ~/.cache/u2qt/jax, or $U2QT_JAX_CACHE) so a rerun,
    a resume or a second config of the same shapes skips XLA compilation."""
    path = path or os.environ.get("U2QT_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "u2qt", "jax")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run_once_options() -> dict:
    """XLA options for a program that runs once or rarely and briefly (the initial train state,
    the finiteness check before a save): on CPU, LLVM without its optimising passes. Measured on
    the 2-core CPU: the small user tokenizer's init (one threefry per parameter) compiled in 8.7 s
    instead of 20 s and ran in milliseconds either way. Other backends keep their defaults."""
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}


def has_checkpoint(workdir: str) -> bool:
    """Whether ``<workdir>/checkpoints`` holds a complete checkpoint (Orbax names it by its step;
    an unfinished save is ``<step>.orbax-checkpoint-tmp-…``)."""
    path = os.path.join(workdir, "checkpoints")
    return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))


def open_workdir(cfg, workdir: str, scope) -> bool:
    """The start of every trainer (u2qt/train/loop.py, federated.py): refuses a workdir whose
    checkpoints belong to another config (reading only) or that is a file, creates it and takes
    its lock on process 0 (released when ``scope`` closes). Returns whether a checkpoint is there
    to resume, read before any process can write one."""
    check_config(cfg, workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
    os.makedirs(workdir, exist_ok=True)
    distributed.main_first(lambda: scope.callback(release_workdir, lock_workdir(workdir)), others=False)
    return has_checkpoint(workdir)


def check_config(cfg, workdir: str) -> None:
    """Refuses to resume a workdir whose checkpoints belong to a different config. Reads only."""
    path = os.path.join(workdir, "config.json")
    if not (os.path.exists(path) and has_checkpoint(workdir)):
        return  # nothing to resume: a new config may take the workdir
    try:
        saved = json.load(open(path))
    except ValueError as e:
        raise WorkdirError(f"{path} is not valid JSON ({e}); this workdir's config is unreadable") from None
    a, b = config_lib.flat(saved), config_lib.flat(json.loads(config_lib.to_json(cfg)))
    a = {**{k: v for k, v in ADDED_LATER.items() if k in b}, **a}
    # Evaluation settings never reach the checkpoint: a run (a finished one too) may be evaluated
    # again with others (e.g. more pruned-ranking shortlist sizes), and its config.json then
    # records them.
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_IGNORED
                  and not k.startswith("eval."))
    if diff:
        shown = ", ".join(f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in diff[:6])
        raise WorkdirError(f"{workdir} holds a run with a different config ({shown}"
                           f"{', ...' if len(diff) > 6 else ''}); use a new --workdir or the same config to resume")


def save_config(cfg, workdir: str) -> None:
    files.write_json(os.path.join(workdir, "config.json"), json.loads(config_lib.to_json(cfg)))


def data_fingerprint(data_path: str, derived: str, extra: tuple[str, ...] = ()) -> dict:
    """What a run trained on: each file of the data directory and each ``extra`` input file (bytes
    and SHA-256; hidden files skipped), and ``derived``, a hash of the examples built from them."""
    paths = {}
    if data_path and os.path.isdir(data_path):
        paths = {name: os.path.join(data_path, name) for name in sorted(os.listdir(data_path))
                 if not name.startswith(".") and os.path.isfile(os.path.join(data_path, name))}
    paths.update({p: p for p in extra if p and os.path.isfile(p)})
    listed = {name: {"bytes": os.path.getsize(full), "sha256": files.sha256(full)} for name, full in paths.items()}
    return {"path": data_path, "files": listed, "examples": derived}


def _changes(saved: dict, now: dict) -> list[str]:
    out = []
    a, b = saved.get("files", {}), now.get("files", {})
    for name in sorted(set(a) | set(b)):
        if name not in b:
            out.append(f"{name} is gone")
        elif name not in a:
            out.append(f"{name} is new")
        elif a[name] != b[name]:
            size = (f"{a[name]['bytes']:,} -> {b[name]['bytes']:,} bytes" if a[name]["bytes"] != b[name]["bytes"]
                    else "same size, other content")
            out.append(f"{name} changed ({size})")
    if not out and saved.get("examples") != now.get("examples"):
        out.append("the examples built from it differ")
    return out


def check_data(workdir: str, fingerprint: dict, resuming: bool, finetune: bool, log=print) -> None:
    """Refuses to resume checkpoints on data other than theirs (saying what changed) unless
    ``finetune`` (config ``train.finetune_changed_data``); records the data of a new run."""
    path = os.path.join(workdir, FINGERPRINT)
    saved = None
    if resuming and os.path.exists(path):
        try:
            saved = json.load(open(path))
        except ValueError:
            saved = None  # cut short by a kill: the files are what counts now
    if saved is not None:
        changes = _changes(saved, fingerprint)
        if not changes:
            return
        what = "; ".join(changes[:8]) + ("; ..." if len(changes) > 8 else "")
        if not finetune:
            raise WorkdirError(
                f"{workdir}: the data in {fingerprint['path'] or '(synthetic)'} changed since its checkpoints were "
                f"written ({what}); resuming would mix two data sets. Use a new --workdir, or "
                f"--config.train.finetune_changed_data=True to continue training the checkpoint on the new data")
        log(f"data changed since the checkpoint ({what}); fine-tuning it on the new data "
            f"(train.finetune_changed_data)")
    files.write_json(path, fingerprint)


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
                raise WorkdirError(
                    f"{workdir} is in use by the run of pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
                    f"(since {owner.get('since', '?')}); wait for it to end, or delete {path} if that run is gone")
            os.remove(path)  # its owner died: take it over
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise WorkdirError(f"{path}: another run took the lock at the same moment; try again")


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
