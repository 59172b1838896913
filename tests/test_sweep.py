"""Sweeps: the product of a config's named sweeps, one ordinary run per trial, a results table."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

SPEC = os.path.join(REPO, "configs", "default.py") + ":runlocal"


def test_the_named_sweeps_multiply_and_name_their_trials():
    from u2qt import sweep
    trials = sweep.trials(SPEC, ["lr", "seed"])
    assert len(trials) == 6 and trials[0] == {"train.lr": 1e-3, "seed": 0}
    names = {sweep.trial_name(t) for t in trials}
    assert len(names) == 6 and all("/" not in n for n in names)
    with pytest.raises(ValueError, match=r"defines no sweep 'nope' \(known: 'beta', 'lr', 'seed'\)"):
        sweep.trials(SPEC, ["nope"])
    with pytest.raises(ValueError, match="sweeps .* both set"):
        sweep.trials(SPEC, ["lr", "lr"])


def test_a_bad_override_stops_the_sweep_before_any_trial_runs(tmp_path, monkeypatch):
    from u2qt import sweep
    monkeypatch.setattr(sweep, "trials", lambda spec, names: [{"train.lr": 1e-3}, {"train.lr": -1.0}])
    with pytest.raises(ValueError, match="train.lr=-1.0 must be > 0"):
        sweep.run_sweep(SPEC, ["lr"], str(tmp_path / "s"))
    assert not os.path.exists(tmp_path / "s" / "trials")


@pytest.mark.heavy
def test_a_sweep_runs_each_trial_once_resumes_a_killed_one_and_ranks_them(tmp_path, compile_cache):
    from u2qt import sweep
    fast = {"train.steps": 12, "quantizer.kmeans_at_step": 4, "train.eval_every": 12, "train.checkpoint_every": 6,
            "train.log_every": 6, "train.warmup_steps": 2}
    trials = [dict(fast, **{"train.lr": lr}) for lr in (1e-3, 4e-3)]
    directory = str(tmp_path / "s")
    # One trial was killed after its first checkpoint: the sweep resumes it.
    killed = os.path.join(directory, "trials", sweep.trial_name(trials[1]))
    os.makedirs(killed)
    json.dump(trials[1], open(os.path.join(killed, "overrides.json"), "w"))
    done = subprocess.run(sweep.command(SPEC, killed, dict(trials[1], **{"train.halt_after_step": 6})),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    import u2qt.sweep as lib
    lib_trials = lib.trials
    try:
        lib.trials = lambda spec, names: trials
        logs = []
        rows = sweep.run_sweep(SPEC, ["lr"], directory, parallel=2, log=logs.append)
    finally:
        lib.trials = lib_trials
    assert any("resuming" in l and os.path.basename(killed) in l for l in logs), logs
    assert "resumed from the checkpoint of step 6" in open(os.path.join(killed, "train.log")).read()
    assert [r["status"] for r in rows] == ["done", "done"]
    # Ranked by the collision rate (a tokenizer without a select metric), best (lowest) first.
    assert rows[0]["collision_rate"] <= rows[1]["collision_rate"]
    md = open(os.path.join(directory, "results.md")).read()
    assert "Ranked by `collision_rate` (lower is better); 2 of 2 trials finished" in md
    assert os.path.getsize(os.path.join(directory, "results.csv")) > 0
    assert open(os.path.join(directory, "results.png"), "rb").read(4) == b"\x89PNG"
    # Rerunning skips finished trials (their summaries stay as they were).
    stamp = os.path.getmtime(os.path.join(killed, "summary.json"))
    logs.clear()
    lib.trials = lambda spec, names: trials
    try:
        sweep.run_sweep(SPEC, ["lr"], directory, parallel=2, log=logs.append)
    finally:
        lib.trials = lib_trials
    assert not any("starting" in l or "resuming" in l for l in logs)
    assert os.path.getmtime(os.path.join(killed, "summary.json")) == stamp


def test_the_cli_says_what_is_wrong(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPO, "sweep.py"), "--config", SPEC, "--sweep", "nope",
                           "--dir", str(tmp_path / "s")], capture_output=True, text=True, cwd=str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "defines no sweep 'nope'" in done.stderr


def test_the_plot_has_a_panel_per_swept_value_with_log_x_for_learning_rates():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from u2qt import sweep
    done = [{"trial": f"t{i}", "set train.lr": lr, "set seed": seed, "set train.steps": 100, "m": m}
            for i, (lr, seed, m) in enumerate([(1e-3, 0, 0.3), (1e-4, 1, 0.2), (1e-2, 0, 0.1)])]
    sweep.plot_against_swept(plt, done, "m", False, "s")
    axes = plt.gcf().axes
    assert [a.get_xlabel() for a in axes] == ["train.lr", "seed"]  # train.steps is the same in every trial
    assert axes[0].get_xscale() == "log" and axes[1].get_xscale() == "linear"
    best = axes[0].collections[-1].get_offsets()
    assert best.tolist() == [[1e-3, 0.3]]  # the best trial (first of the ranked rows) marked
    plt.close("all")
    sweep.plot_against_swept(plt, done[:1], "m", False, "s")  # nothing varies: one bar per trial
    assert len(plt.gcf().axes) == 1 and len(plt.gcf().axes[0].patches) == 1
    plt.close("all")
