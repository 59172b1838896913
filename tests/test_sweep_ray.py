"""Sweeps on Ray (--backend ray): the same trials, workdirs and report as a local sweep, run by
Ray Tune on a local Ray instance; Ray stays an optional extra that the default path never imports."""
import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from conftest import REPO

SPEC = os.path.join(REPO, "configs", "default.py") + ":runlocal"
SWEEP_PY = os.path.join(REPO, "sweep.py")


def _sweep_cli(*args, env=None, cwd):
    return subprocess.run([sys.executable, SWEEP_PY, "--config", SPEC, *args], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_without_ray_the_local_sweep_works_and_the_ray_backend_names_the_extra(tmp_path):
    from u2qt import sweep
    hidden = tmp_path / "no_ray"
    hidden.mkdir()
    (hidden / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")]))
    # Two finished trials of the config's seed sweep: the local sweep skips them and writes the table.
    directory = tmp_path / "s"
    for overrides, rate in (({"seed": 0}, 0.25), ({"seed": 1}, 0.5)):
        workdir = directory / "trials" / sweep.trial_name(overrides)
        workdir.mkdir(parents=True)
        (workdir / "overrides.json").write_text(json.dumps(overrides))
        (workdir / "summary.json").write_text(json.dumps({"collision_rate": rate, "wall_seconds": 1.0}))
    done = _sweep_cli("--sweep", "seed", "--dir", str(directory), env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 of 2 trials finished" in done.stdout and "starting" not in done.stdout
    done = _sweep_cli("--sweep", "seed", "--dir", str(directory), "--backend", "ray", env=env, cwd=str(tmp_path))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: --backend ray needs Ray Tune") and 'pip install ".[ray]"' in done.stderr


def test_trial_resources_default_to_one_node_s_devices_and_refuse_what_no_node_has():
    from u2qt import sweep
    cpu_nodes = [{"Alive": True, "Resources": {"CPU": 16.0}}, {"Alive": True, "Resources": {"CPU": 8.0}},
                 {"Alive": False, "Resources": {"CPU": 2.0}}]
    assert sweep.trial_resources(cpu_nodes, None, None) == {"cpu": 8.0, "gpu": 0}
    gpu_nodes = [{"Alive": True, "Resources": {"CPU": 4.0}},  # a head node without GPUs
                 {"Alive": True, "Resources": {"CPU": 32.0, "GPU": 8.0}},
                 {"Alive": True, "Resources": {"CPU": 32.0, "GPU": 4.0}}]
    assert sweep.trial_resources(gpu_nodes, None, None) == {"cpu": 1, "gpu": 4.0}
    assert sweep.trial_resources(gpu_nodes, 2, 1) == {"cpu": 2, "gpu": 1}
    with pytest.raises(ValueError, match=r"no node of the Ray cluster has 1 CPUs and 16 GPUs .*--ray-gpus-per-trial"):
        sweep.trial_resources(gpu_nodes, None, 16)
    with pytest.raises(ValueError, match="need --backend ray"):
        sweep.run_sweep(SPEC, ["seed"], "unused", address="auto")
    with pytest.raises(ValueError, match="CPUs must be > 0"):
        sweep.run_sweep(SPEC, ["seed"], "unused", backend="ray", cpus_per_trial=0)


def test_an_unreachable_ray_address_is_one_clear_error(tmp_path):
    pytest.importorskip("ray.tune")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = _sweep_cli("--sweep", "seed", "--dir", str(tmp_path / "s"), "--backend", "ray",
                      "--address", f"127.0.0.1:{port}", cwd=str(tmp_path))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith(f"error: --address 127.0.0.1:{port}: nothing answers") and "ray start --head" \
        in done.stderr
    assert not os.path.exists(tmp_path / "s" / "trials")


@pytest.fixture
def local_ray(compile_cache):
    """A local Ray instance of 2 CPUs with its files in a short temporary directory (Ray's socket
    paths must stay under 107 characters), shut down whatever the test does."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    temp = tempfile.mkdtemp(prefix="u2qt-ray-", dir="/tmp")
    try:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, logging_level=logging.WARNING)
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.heavy
def test_a_ray_sweep_runs_the_local_trials_reports_them_to_tune_and_skips_them_when_rerun(tmp_path, local_ray,
                                                                                        monkeypatch):
    from u2qt import sweep
    fast = {"train.steps": 12, "quantizer.kmeans_at_step": 4, "train.eval_every": 12, "train.checkpoint_every": 6,
            "train.warmup_steps": 2}
    # One trial: what Ray adds is the plumbing (a trial is an ordinary run in its workdir, its
    # metrics reach Tune, a rerun skips it); several trials, their table and ranking are the
    # local sweep's (tests/test_sweep.py), the same code after the trials ran.
    trials = [dict(fast, **{"train.log_every": 6})]
    monkeypatch.setattr(sweep, "trials", lambda spec, names: trials)
    directory = str(tmp_path / "s")
    rows = sweep.run_sweep(SPEC, ["seed"], directory, backend="ray", cpus_per_trial=2)
    # The same workdirs as a local sweep: each trial an ordinary finished run with its overrides.
    names = [sweep.trial_name(t) for t in trials]
    for name, overrides in zip(names, trials):
        workdir = os.path.join(directory, "trials", name)
        assert json.load(open(os.path.join(workdir, "overrides.json"))) == overrides
        summary = json.load(open(os.path.join(workdir, "summary.json")))
        assert summary["steps"] == 12 and 0 <= summary["collision_rate"] <= 1
    assert [r["trial"] for r in rows] == names and [r["status"] for r in rows] == ["done"]
    assert rows[0]["set train.log_every"] == 6
    md = open(os.path.join(directory, "results.md")).read()
    assert "1 of 1 trials finished" in md and all(f"| {name} | done | " in md for name in names)
    assert open(os.path.join(directory, "results.png"), "rb").read(4) == b"\x89PNG"
    # Tune got each trial's final metrics (its own results, under DIR/ray_tune).
    reported = [json.loads(open(p).readline()) for p in glob.glob(os.path.join(directory, "ray_tune", "*", "*",
                                                                               "result.json"))]
    assert sorted(r["config"]["trial"] for r in reported) == sorted(names)
    assert all(isinstance(r["collision_rate"], float) and r["steps"] == 12 for r in reported)
    # Rerunning skips the finished trials (their summaries stay as they were) and reports them again.
    stamps = [os.path.getmtime(os.path.join(directory, "trials", n, "summary.json")) for n in names]
    rows_again = sweep.run_sweep(SPEC, ["seed"], directory, backend="ray", cpus_per_trial=2)
    assert [os.path.getmtime(os.path.join(directory, "trials", n, "summary.json")) for n in names] == stamps
    assert [r["trial"] for r in rows_again] == [r["trial"] for r in rows]
    assert len(glob.glob(os.path.join(directory, "ray_tune", "*", "*", "result.json"))) == 2
