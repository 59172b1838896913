"""A run's directory: its resolved config (a rerun resumes only the same run), its metrics log
(JSONL and TensorBoard, from process 0 only), and the persistent cache of compiled programs."""
from __future__ import annotations

import json
import os

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


class MetricsWriter:
    """Metrics to ``metrics.jsonl`` and TensorBoard, from process 0 only."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
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
