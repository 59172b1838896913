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

``--backend ray`` runs the same trials on a Ray cluster through Ray Tune (``run_on_ray``): one Tune
trial per sweep trial, each calling ``run_trial`` on some node, so workdirs, skipping and resuming
are those of a local sweep, and the driver writes the same report at the end. Ray is an optional
extra (``pip install ".[ray]"``), imported only on that path.
"""
from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import re
import socket
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


def plot_against_swept(plt, done: list[dict], metric: str, lower_is_better: bool, title: str) -> None:
    """One panel per swept key (an override whose value differs between finished trials): the metric
    of each trial against its value (log x for positive numbers spanning 10x or more; other values
    in order of first appearance); the best trial in another colour. No key varies (one trial):
    one bar per trial."""
    keys = [k for k in dict.fromkeys(c for r in done for c in r if c.startswith("set "))
            if len({repr(r.get(k)) for r in done}) > 1]
    best = done[0]
    if not keys:
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(done) + 2), 3.5))
        ax.bar(range(len(done)), [r[metric] for r in done])
        ax.set_xticks(range(len(done)), [r["trial"].rpartition("-")[0] or r["trial"] for r in done], rotation=45,
                      ha="right", fontsize=7)
        ax.set_ylabel(metric)
        ax.set_title(f"{title}: {metric} by trial", fontsize=9)
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [r.get(key) for r in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            xs = values
            if min(values) > 0 and max(values) / min(values) >= 10:
                ax.set_xscale("log")
            if len(set(values)) <= 8:  # the swept values themselves as ticks, nothing in between
                ax.minorticks_off()
                ax.set_xticks(sorted(set(values)), [f"{v:g}" for v in sorted(set(values))], fontsize=7)
        else:
            order = list(dict.fromkeys(repr(v) for v in values))
            xs = [order.index(repr(v)) for v in values]
            ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=7)
        ys = [r[metric] for r in done]
        if numeric and len(keys) == 1:  # one swept key: the trials form a curve
            pairs = sorted(zip(xs, ys))
            ax.plot([p[0] for p in pairs], [p[1] for p in pairs], "-", color="0.7", zorder=1)
        ax.scatter(xs, ys, zorder=2, label="trials")
        ax.scatter([xs[0]], [ys[0]], color="tab:red", zorder=3, label="best")
        ax.set_xlabel(key[len("set "):])
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{title}: {metric} ({'lower' if lower_is_better else 'higher'} is better)\n"
                 f"against each swept value; best {best['trial']}", fontsize=9)
    fig.tight_layout()


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
        plot_against_swept(plt, done, metric, lower_is_better, os.path.basename(os.path.abspath(directory)))
        fig = plt.gcf()
        files.atomic_write(os.path.join(directory, "results.png"),
                           lambda tmp: fig.savefig(tmp, dpi=80, format="png", bbox_inches="tight"))
        plt.close(fig)
    return rows


def run_sweep(spec: str, names: list[str], directory: str, parallel: int | None = None, log=print,
              backend: str = "local", address: str | None = None, cpus_per_trial: float | None = None,
              gpus_per_trial: float | None = None) -> list[dict]:
    """Runs every trial not yet done (``backend`` "local": here, ``parallel`` at a time, default 1;
    "ray": on a Ray cluster, see ``run_on_ray``) and returns the report's rows, best first."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend != "ray" and (address, cpus_per_trial, gpus_per_trial) != (None, None, None):
        raise ConfigError("--address, --ray-cpus-per-trial and --ray-gpus-per-trial need --backend ray")
    if (cpus_per_trial is not None and cpus_per_trial <= 0) or (gpus_per_trial is not None and gpus_per_trial < 0):
        raise ConfigError(f"--ray-cpus-per-trial {cpus_per_trial} / --ray-gpus-per-trial {gpus_per_trial}: CPUs must "
                          f"be > 0 and GPUs >= 0")
    if parallel is not None and parallel < 1:
        raise ConfigError(f"--parallel {parallel}: must be at least 1")
    all_overrides = trials(spec, names)
    check(spec, all_overrides)
    jobs = {trial_name(o): o for o in all_overrides}
    if backend == "ray":
        statuses = run_on_ray(spec, directory, jobs, address, cpus_per_trial, gpus_per_trial, parallel, log)
    else:
        parallel = parallel or 1
        log(f"sweep: {len(jobs)} trials of {spec} in {directory}, {parallel} at a time")
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            statuses = dict(zip(jobs, pool.map(
                lambda name: run_trial(spec, os.path.join(directory, "trials", name), jobs[name], log), jobs)))
    failed = [name for name, status in statuses.items() if status != "done"]
    if failed:
        log(f"sweep: {len(failed)} trials failed: {', '.join(failed)} (rerun the same command to retry them)")
    return report(directory, spec)


BACKENDS = ("local", "ray")
RAY_EXTRA = 'pip install ".[ray]" (or pip install "ray[tune]>=2.41")'


def _import_ray():
    """``ray`` and ``ray.tune``, imported only here: the local backend never needs them."""
    try:
        import ray
        from ray import tune
    except ImportError as e:
        raise ConfigError(f"--backend ray needs Ray Tune, which is not installed ({e}); {RAY_EXTRA}") from None
    if not hasattr(tune, "report") or not hasattr(tune, "RunConfig"):
        raise ConfigError(f"--backend ray needs Ray >= 2.41 (ray.tune.report, ray.tune.RunConfig); this is "
                          f"Ray {ray.__version__}: {RAY_EXTRA}")
    return ray, tune


def _probe(address: str) -> None:
    """Fails fast on a HOST:PORT (or ray://HOST:PORT) where nothing listens: ``ray.init`` would
    retry for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"--address {address}: nothing answers at {host}:{port} ({e}); start the cluster's head "
                          f"with `ray start --head` (it prints the address to use)") from None


def connect_ray(address: str | None, log=print):
    """Connects to the Ray cluster at ``address`` ("auto": the one running on this machine;
    HOST:PORT or ray://HOST:PORT; None: an instance already initialized in this process, else a
    local instance for this sweep). Returns (ray, tune, whether this call connected)."""
    ray, tune = _import_ray()
    if ray.is_initialized():
        return ray, tune, False
    if address:
        _probe(address)
    kwargs = {} if address else {"include_dashboard": False}
    try:
        ray.init(address=address or "local", logging_level=logging.WARNING, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        hint = ("; start one with `ray start --head`, or leave out --address to start a local Ray instance for this "
                "sweep") if address == "auto" else (
            "; a cluster with token authentication (Ray's default since 2.59) needs RAY_AUTH_MODE=token here and its "
            "token in ~/.ray/auth_token or $RAY_AUTH_TOKEN") if address else ""
        raise ConfigError(f"--address {address or 'local'}: cannot connect to Ray ({e}){hint}") from None
    log(f"sweep: Ray {ray.__version__} at {ray.get_runtime_context().gcs_address}, "
        f"{', '.join(f'{k} {v:g}' for k, v in sorted(ray.cluster_resources().items()) if k in ('CPU', 'GPU', 'TPU'))}")
    return ray, tune, True


def trial_resources(nodes: list[dict], cpus: float | None, gpus: float | None) -> dict:
    """Resources of one trial: by default a node's devices (the fewest GPUs of a node that has
    any, with 1 CPU; on a cluster without GPUs, the fewest CPUs of a node). Refuses what no node has."""
    alive = [n["Resources"] for n in nodes if n.get("Alive")]
    with_gpus = [r["GPU"] for r in alive if r.get("GPU", 0) > 0]
    if gpus is None:
        gpus = min(with_gpus) if with_gpus else 0
    if cpus is None:
        cpus = 1 if gpus else min((r["CPU"] for r in alive if r.get("CPU", 0) > 0), default=1)
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in alive):
        shown = "; ".join(f"{r.get('CPU', 0):g} CPUs, {r.get('GPU', 0):g} GPUs" for r in alive) or "none alive"
        raise ConfigError(f"no node of the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs for a trial "
                          f"(nodes: {shown}); lower --ray-cpus-per-trial / --ray-gpus-per-trial")
    return {"cpu": cpus, "gpu": gpus}


def run_on_ray(spec: str, directory: str, jobs: dict[str, dict], address: str | None, cpus: float | None,
               gpus: float | None, parallel: int | None, log=print) -> dict[str, str]:
    """Runs the trials ``jobs`` ({name: overrides}) as Ray Tune trials, one ``run_trial`` each on
    a node of the cluster, and returns {name: status}. Every node must see the repo, the Python
    environment, the directory this runs in and ``directory`` at the same paths (shared storage)."""
    ray, tune, connected = connect_ray(address, log)
    try:
        resources = trial_resources(ray.nodes(), cpus, gpus)
        directory = os.path.abspath(directory)
        os.makedirs(os.path.join(directory, "trials"), exist_ok=True)
        log(f"sweep: {len(jobs)} trials of {spec} in {directory} on Ray, {resources['cpu']:g} CPU(s) and "
            f"{resources['gpu']:g} GPU(s) per trial" + (f", at most {parallel} at a time" if parallel else ""))

        def u2qt_trial(config, spec, cwd, directory, jobs, repo):
            # Pickled by value (it is local): a worker imports u2qt only after putting the repo on its path.
            import json
            import os
            import socket
            import sys
            if repo not in sys.path:
                sys.path.insert(0, repo)
            from ray import tune
            from u2qt import config as config_lib
            from u2qt import sweep
            where = f"on node {socket.gethostname()}"
            if not os.path.isdir(cwd):
                raise RuntimeError(f"{cwd} (where sweep.py runs) does not exist {where}: run it from a directory "
                                   f"every node mounts at the same path")
            os.chdir(cwd)  # the same relative paths (config, data) as a local trial
            if not os.path.isdir(directory):
                raise RuntimeError(f"the sweep directory {directory} is not visible {where}: put it on storage every "
                                   f"node mounts at the same path")
            name = config["trial"]
            workdir = os.path.join(directory, "trials", name)
            status = sweep.run_trial(spec, workdir, jobs[name], log=lambda line: print(line, flush=True))
            if status != "done":
                raise RuntimeError(f"{status} {where}")
            summary = json.load(open(os.path.join(workdir, "summary.json")))
            tune.report({k: v for k, v in config_lib.flat(summary).items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)})

        trainable = tune.with_resources(
            tune.with_parameters(u2qt_trial, spec=spec, cwd=os.getcwd(), directory=directory, jobs=jobs,
                                 repo=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), resources)
        tuner = tune.Tuner(
            trainable, param_space={"trial": tune.grid_search(list(jobs))},
            tune_config=tune.TuneConfig(max_concurrent_trials=parallel or None),
            run_config=tune.RunConfig(name=time.strftime("tune-%Y-%m-%d_%H-%M-%S"),
                                      storage_path=os.path.join(directory, "ray_tune"), verbose=1))
        statuses = {name: "not run" for name in jobs}
        for result in tuner.fit():
            name = result.config["trial"]
            statuses[name] = "done" if result.error is None else "failed"
            if result.error is not None:  # its last line: the exception the trial raised
                log(f"sweep: {name} failed on Ray: {str(result.error).strip().splitlines()[-1]}")
        return statuses
    finally:
        if connected:  # disconnects; stops Ray only where this sweep started it
            ray.shutdown()
