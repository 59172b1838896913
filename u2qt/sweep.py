"""Hyper-parameter sweeps from a config file (the kauldron convention).

A config file may define ``sweep()`` and any number of ``sweep_<name>()`` generators, each yielding
dicts of dotted overrides::

    def sweep_lr():
        for lr in (3e-4, 1e-3, 3e-3):
            yield {"train.lr": lr}

    def sweep_seed():
        for seed in range(3):
            yield {"seed": seed}

``python sweep.py --config configs/X.py:variant --sweep lr,seed --dir sweeps/X`` runs the product
of the named sweeps (9 trials here; without ``--sweep``, the file's ``sweep()``). Each trial is an
ordinary run (``python train.py`` in a child process, its output in ``<trial>/train.log``) in its
own workdir ``<dir>/trials/<name>``: a trial that finished (``summary.json``) is skipped, a killed
one resumes from its checkpoint, ``--parallel N`` runs N at a time. Every trial's overrides are
checked against the config before any trial starts.

At the end, and with ``--report`` alone: ``results.md`` and ``results.csv`` (each trial's
overrides, status, selected and test metrics, sorted by the ranking metric) and ``results.png``.
The ranking metric is the config's ``train.select_metric`` (its selected value, higher is better)
or, for a tokenizer, the collision rate (lower is better); ``--metric`` / ``--lower-is-better``
choose another summary number.
"""
from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import importlib.util
import itertools
import json
import os
import re
import subprocess
import time

from u2qt import config as config_lib
from u2qt import files
from u2qt.errors import ConfigError

def sweep_generators(spec: str) -> dict[str, callable]:
    """{name: generator} of the config file in ``spec`` ("" for ``sweep()``)."""
    path = spec.partition(":")[0]
    module_spec = importlib.util.spec_from_file_location(f"u2qt_sweep_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    out = {}
    for name in dir(module):
        if name == "sweep" or name.startswith("sweep_"):
            out[name.removeprefix("sweep").removeprefix("_")] = getattr(module, name)
    return out


def trials(spec: str, names: list[str]) -> list[dict]:
    """The product of the named sweeps: one dict of overrides per trial, in order."""
    found = sweep_generators(spec)
    names = names or [""]
    missing = [n for n in names if n not in found]
    if missing:
        known = ", ".join(repr(k) if k else "sweep()" for k in sorted(found)) or "none"
        raise ConfigError(f"{spec.partition(':')[0]} defines no sweep {', '.join(map(repr, missing))} "
                          f"(known: {known})")
    out = []
    for combo in itertools.product(*[list(found[n]()) for n in names]):
        merged = {}
        for part in combo:
            clash = set(part) & set(merged)
            if clash:
                raise ConfigError(f"sweeps {names} both set {sorted(clash)}")
            merged.update(part)
        out.append(merged)
    if not out:
        raise ConfigError(f"sweeps {names} yield no trial")
    return out


def trial_name(overrides: dict) -> str:
    """A readable, stable directory name: key=value pairs (short key names) + a hash of the whole."""
    text = ",".join(f"{k.rpartition('.')[2]}={v}" for k, v in sorted(overrides.items()))
    text = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", text)[:80]
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{text}-{digest}" if text else digest


def check(spec: str, all_overrides: list[dict]) -> None:
    """Every trial's overrides apply to the config and pass its checks (before anything runs)."""
    from u2qt import defaults
    for overrides in all_overrides:
        cfg = config_lib.load_config_file(spec)
        for key, value in overrides.items():
            config_lib.apply_override(cfg, key, value if isinstance(value, str) else repr(value))
        config_lib.validate(cfg, defaults.CONSTRAINTS, defaults.cross_key_problems)


def command(spec: str, workdir: str, overrides: dict) -> list[str]:
    return config_lib.train_command(spec, workdir, {"train.progress": False, **overrides})


def run_trial(spec: str, workdir: str, overrides: dict, log=print) -> str:
    """'done' (already or now), or 'failed (exit N)'."""
    if os.path.exists(os.path.join(workdir, "summary.json")):
        return "done"
    os.makedirs(workdir, exist_ok=True)
    files.write_json(os.path.join(workdir, "overrides.json"), overrides)
    resume = os.path.isdir(os.path.join(workdir, "checkpoints"))
    log(f"sweep: {'resuming' if resume else 'starting'} {os.path.basename(workdir)}")
    with open(os.path.join(workdir, "train.log"), "a") as out:
        code = subprocess.run(command(spec, workdir, overrides), stdout=out, stderr=subprocess.STDOUT).returncode
    status = "done" if code == 0 else f"failed (exit {code}; see {workdir}/train.log)"
    log(f"sweep: {os.path.basename(workdir)} {status}")
    return status


def report(directory: str, spec: str, metric: str | None = None, lower_is_better: bool | None = None) -> list[dict]:
    """Writes results.md, results.csv and results.png in ``directory``; returns the rows, best first."""
    cfg = config_lib.load_config_file(spec)
    select = cfg.train.get("select_metric", "")
    if metric is None:
        metric, lower_is_better = ("selected.value", False) if select else ("collision_rate", True)
    lower_is_better = bool(lower_is_better)
    rows = []
    root = os.path.join(directory, "trials")
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        workdir = os.path.join(root, name)
        overrides = json.load(open(os.path.join(workdir, "overrides.json"))) \
            if os.path.exists(os.path.join(workdir, "overrides.json")) else {}
        summary = json.load(open(os.path.join(workdir, "summary.json"))) \
            if os.path.exists(os.path.join(workdir, "summary.json")) else None
        row = {"trial": name, "status": "done" if summary else (
            "started" if os.path.isdir(os.path.join(workdir, "checkpoints")) else "not finished"),
               **{f"set {k}": v for k, v in overrides.items()}}
        if summary:
            numbers = config_lib.flat(summary)
            row[metric] = numbers.get(metric)
            if select:
                row["selected step"] = numbers.get("selected.step")
            for k, v in (summary.get("test") or {}).items():
                if isinstance(v, (int, float)) and not k.startswith("valid_"):
                    row[f"test {k}"] = v
            for k in ("collision_rate", "rows_sharing_codes", "purity_first_code"):
                if k in summary and k != metric:
                    row[k] = summary[k]
            row["wall s"] = round(summary.get("wall_seconds", 0.0))
        rows.append(row)
    done = [r for r in rows if isinstance(r.get(metric), (int, float))]
    done.sort(key=lambda r: r[metric], reverse=not lower_is_better)
    rows = done + [r for r in rows if r not in done]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = [f"# Sweep {directory}: {spec}", "",
             f"Ranked by `{metric}` ({'lower' if lower_is_better else 'higher'} is better); "
             f"{len(done)} of {len(rows)} trials finished. Written {time.strftime('%Y-%m-%d %H:%M')}.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    files.atomic_write(os.path.join(directory, "results.md"), lambda tmp: open(tmp, "w").write("\n".join(lines) + "\n"))

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    files.atomic_write(os.path.join(directory, "results.csv"), write_csv)
    if done:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(done) + 2), 3.5))
        ax.bar(range(len(done)), [r[metric] for r in done])
        ax.set_xticks(range(len(done)), [r["trial"].rpartition("-")[0] or r["trial"] for r in done], rotation=45,
                      ha="right", fontsize=7)
        ax.set_ylabel(metric)
        ax.set_title(f"{os.path.basename(os.path.abspath(directory))}: {metric} by trial, best first", fontsize=9)
        files.atomic_write(os.path.join(directory, "results.png"),
                           lambda tmp: fig.savefig(tmp, dpi=80, format="png", bbox_inches="tight"))
        plt.close(fig)
    return rows


def run_sweep(spec: str, names: list[str], directory: str, parallel: int = 1, log=print) -> list[dict]:
    all_overrides = trials(spec, names)
    check(spec, all_overrides)
    log(f"sweep: {len(all_overrides)} trials of {spec} in {directory}, {parallel} at a time")
    jobs = [(os.path.join(directory, "trials", trial_name(o)), o) for o in all_overrides]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        statuses = list(pool.map(lambda job: run_trial(spec, job[0], job[1], log), jobs))
    failed = [os.path.basename(w) for (w, _), s in zip(jobs, statuses) if s != "done"]
    if failed:
        log(f"sweep: {len(failed)} trials failed: {', '.join(failed)} (rerun the same command to retry them)")
    return report(directory, spec)
