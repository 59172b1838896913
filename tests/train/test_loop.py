"""The train loop end to end: outputs, resume after a kill, 8 devices vs 1, MovieLens, bad input."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, shared_data
from u2qt import config as config_lib
from u2qt.errors import WorkdirError


def runlocal(**overrides):
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "default.py:runlocal"))
    for key, value in overrides.items():
        config_lib.apply_override(cfg, key, repr(value) if not isinstance(value, str) else value)
    config_lib.apply_override(cfg, "train.progress", "False")
    return cfg


def train(cfg, workdir):
    from u2qt.train.loop import run
    return run(cfg, str(workdir))


def final_params(workdir):
    """Codebooks and continuous representations: together they pin down the trained model."""
    books = dict(np.load(os.path.join(workdir, "codebooks.npz")))
    return books, np.load(os.path.join(workdir, "representations.npy"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, compile_cache):
    workdir = tmp_path_factory.mktemp("run")
    summary = train(runlocal(), workdir)
    return workdir, summary


@pytest.mark.heavy
def test_run_writes_tokens_codebooks_metrics_summary_and_plot(finished_run):
    workdir, summary = finished_run
    for name in ("config.json", "dataset_spec.json", "semantic_ids.parquet", "codebooks.npz", "summary.json",
                 "metrics.jsonl", "training.png", "representations.npy"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    cfg = runlocal()
    tokens = pd.read_parquet(os.path.join(workdir, "semantic_ids.parquet"))
    assert len(tokens) == cfg.data.synthetic_users
    # The layout: the shared stack first, then each source's in config order, then the de-dup token.
    q = cfg.quantizer
    assert list(tokens.columns) == (["id"] + [f"shared_{l}" for l in range(q.shared_levels)]
                                    + [f"{s}_{l}" for s in cfg.model.sources for l in range(q.source_levels)]
                                    + ["dedup"])
    shared = tokens[[f"shared_{l}" for l in range(cfg.quantizer.shared_levels)]].to_numpy()
    assert shared.min() >= 0 and shared.max() < cfg.quantizer.shared_codes
    assert {f"text_{l}" for l in range(cfg.quantizer.source_levels)} <= set(tokens.columns)
    written = json.load(open(os.path.join(workdir, "summary.json")))
    assert written["compression_x"] == pytest.approx(written["bytes_per_row_float32"] / written["bytes_per_row_tokens"])
    assert written["primary_view"] == "shared"
    # The reported numbers are those of the written table.
    from u2qt.quant.stats import collision_rate, purity, rows_sharing_codes
    assert written["collision_rate"] == collision_rate(shared)  # (N − distinct)/N
    assert written["rows_sharing_codes"] == rows_sharing_codes(shared)
    assert written["collision_rate"] <= written["rows_sharing_codes"] <= 2 * written["collision_rate"]
    # 40 steps already beat chance: the first shared code separates the planted user types
    # better than the same codes dealt to the users at random (≈ 0.25 for 8 types in 16 codes).
    from u2qt.data.synthetic import make_synthetic
    _, types = make_synthetic(cfg.data.synthetic_users, cfg.data.synthetic_items, cfg.data.synthetic_types, seed=0)
    shuffled = max(purity(np.random.default_rng(s).permutation(shared[:, 0]), types) for s in range(5))
    assert written["purity_first_code"] == purity(shared[:, 0], types)
    assert written["purity_first_code"] >= shuffled + 0.1, (written["purity_first_code"], shuffled)
    assert len(written["views"]["shared"]["usage"]) == cfg.quantizer.shared_levels
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(cfg.train.log_every, cfg.train.steps + 1, cfg.train.log_every))
    assert all(np.isfinite(r["loss"]) for r in train_rows)
    assert any(r["split"] == "eval" for r in rows)
    assert os.path.isdir(os.path.join(workdir, "tensorboard"))


def test_rerun_of_a_finished_run_resumes_instead_of_retraining(finished_run):
    workdir, summary = finished_run
    before = final_params(workdir)
    train(runlocal(), workdir)
    after = final_params(workdir)
    np.testing.assert_array_equal(before[1], after[1])


def test_workdir_with_another_config_is_refused(finished_run):
    workdir, _ = finished_run
    with pytest.raises(WorkdirError, match="different config"):
        train(runlocal(**{"train.lr": 0.5}), workdir)


@pytest.mark.heavy
def test_killed_and_resumed_run_ends_with_the_same_parameters(tmp_path, finished_run):
    # Halt after step 25: past the k-means init (step 10) and a dead-code reset (step 20),
    # mid-way between checkpoints, so the data iterator state and RNG must both be restored.
    halted = tmp_path / "halted"
    train(runlocal(**{"train.halt_after_step": 25}), halted)
    assert not os.path.exists(halted / "codebooks.npz")
    train(runlocal(**{"train.halt_after_step": 25}), halted)  # the same command again resumes
    workdir, _ = finished_run
    a_books, a_repr = final_params(workdir)
    b_books, b_repr = final_params(halted)
    for view in a_books:
        np.testing.assert_allclose(a_books[view], b_books[view], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a_repr, b_repr, rtol=1e-5, atol=1e-5)


def test_an_end_of_run_killed_between_export_parts_resumes_at_the_next_part(tmp_path, finished_run, monkeypatch):
    """The export encodes part by part; a kill after two parts leaves them, the same command
    encodes only the rest, and the files equal those of the run that exported in one part."""
    import shutil
    from u2qt.train import codebooks
    workdir, summary = finished_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("run.lock"))
    for name in ("semantic_ids.parquet", "codebooks.npz", "representations.npy", "summary.json"):
        os.remove(copy / name)
    monkeypatch.setattr(codebooks.CodebookHook, "EXPORT_ROWS", 96)  # 400 users: 5 parts
    write, encoded = codebooks._write_part, []

    def killed_after_two(directory, i, arrays):
        if len(encoded) == 2:
            raise KeyboardInterrupt  # as a kill between parts
        write(directory, i, arrays)
        encoded.append(i)
    monkeypatch.setattr(codebooks, "_write_part", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(runlocal(), copy)
    assert sorted(os.listdir(copy / codebooks.PARTS_DIR)) == ["key", "part_00000.npz", "part_00001.npz"]
    assert not os.path.exists(copy / "semantic_ids.parquet")

    def counted(directory, i, arrays):
        write(directory, i, arrays)
        encoded.append(i)
    monkeypatch.setattr(codebooks, "_write_part", counted)
    resumed = train(runlocal(), copy)
    assert encoded == [0, 1, 2, 3, 4]  # parts 0 and 1 were not encoded again
    assert not os.path.exists(copy / codebooks.PARTS_DIR)
    pd.testing.assert_frame_equal(pd.read_parquet(copy / "semantic_ids.parquet"),
                                  pd.read_parquet(workdir / "semantic_ids.parquet"))
    np.testing.assert_allclose(np.load(copy / "representations.npy"), np.load(workdir / "representations.npy"),
                               rtol=1e-6, atol=1e-6)
    assert resumed["collision_rate"] == summary["collision_rate"]
    for view, s in summary["views"].items():
        assert resumed["views"][view]["relative_quantization_error"] == pytest.approx(s["relative_quantization_error"], rel=1e-5)


def test_export_parts_of_other_parameters_are_not_reused(tmp_path):
    from u2qt.train import codebooks
    books = {"shared": np.zeros((2, 4, 3), np.float32)}
    key = codebooks._parts_key(books, 10, 4)
    directory = str(tmp_path / codebooks.PARTS_DIR)
    assert not codebooks._parts_done(directory, key, 3).any()
    codebooks._write_part(directory, 0, {"codes.shared": np.zeros((4, 2), np.int32)})
    assert codebooks._parts_done(directory, key, 3).tolist() == [True, False, False]
    other = codebooks._parts_key({"shared": books["shared"] + 1}, 10, 4)
    assert other != key and not codebooks._parts_done(directory, other, 3).any()
    assert os.listdir(directory) == ["key"]
    with open(codebooks._part_path(directory, 1), "wb") as f:
        f.write(b"not an npz")
    with pytest.raises(WorkdirError, match="part_00001.npz.*delete"):
        codebooks._read_part(directory, 1)


@pytest.mark.heavy
def test_streamed_data_train_and_resume_exactly(tmp_path, compile_cache, capsys):
    """Data over ``data.device_mb`` stream through grain from array_record files (the path for
    data larger than memory); the iterator's position is checkpointed, so a killed run resumes
    to the same parameters as a straight one."""
    streamed = {"data.device_mb": 0.0, "train.steps": 16, "quantizer.kmeans_at_step": 4,
                "quantizer.reset_every": 4, "train.eval_every": 100, "train.checkpoint_every": 8}
    train(runlocal(**streamed), tmp_path / "straight")
    assert "stream through grain" in capsys.readouterr().out
    assert os.path.isdir(tmp_path / "straight" / "cache" / "tfds")
    train(runlocal(**streamed, **{"train.halt_after_step": 11}), tmp_path / "halted")
    train(runlocal(**streamed, **{"train.halt_after_step": 11}), tmp_path / "halted")
    a_books, a_repr = final_params(tmp_path / "straight")
    b_books, b_repr = final_params(tmp_path / "halted")
    for view in a_books:
        np.testing.assert_allclose(a_books[view], b_books[view], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a_repr, b_repr, rtol=1e-5, atol=1e-5)


@pytest.mark.heavy
def test_eight_devices_match_one(tmp_path, compile_cache):
    script = (
        "import sys, os; sys.path.insert(0, os.path.join(sys.argv[1], 'tests'))\n"
        "sys.path.insert(0, os.path.join(sys.argv[1], 'tests', 'train')); sys.path.insert(0, sys.argv[1])\n"
        "import jax; from test_loop import runlocal, train\n"
        "from u2qt.train.workdir import enable_compilation_cache; enable_compilation_cache()\n"
        "assert len(jax.devices()) == int(sys.argv[3]), jax.devices()\n"
        "train(runlocal(**{'train.steps': 8, 'quantizer.kmeans_at_step': 3, 'train.eval_every': 100,"
        " 'quantizer.reset_every': 4}), sys.argv[2])\n")
    results = {}
    for devices in (1, 8):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        out = subprocess.run([sys.executable, "-c", script, REPO, str(tmp_path / f"d{devices}"), str(devices)],
                             env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        results[devices] = final_params(tmp_path / f"d{devices}")
    for view in results[1][0]:
        np.testing.assert_allclose(results[1][0][view], results[8][0][view], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results[1][1], results[8][1], rtol=1e-3, atol=1e-3)


@pytest.mark.heavy
def test_movielens_builds_and_trains_a_few_steps(tmp_path, compile_cache):
    path = shared_data("movielens-1m")
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "movielens.py:runlocal"))
    config_lib.apply_override(cfg, "data.path", path)
    config_lib.apply_override(cfg, "train.progress", "False")
    summary = train(cfg, tmp_path)
    assert summary["rows"] == 6040  # users 3000-6040 have no ratings in the shared copy and still get tokens
    tokens = pd.read_parquet(tmp_path / "semantic_ids.parquet")
    assert tokens["id"].tolist()[:3] == ["1", "2", "3"]
    spec = json.load(open(tmp_path / "dataset_spec.json"))
    assert "gender" in spec["cat_fields"] and len(spec["item_ids"]) == 3883


def _train_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_unknown_config_key_fails_with_the_key_named(tmp_path):
    out = _train_cli("--workdir", str(tmp_path), "--config.train.stepz=3")
    assert out.returncode == 2
    assert "unknown config key 'train.stepz'" in out.stderr and "train.steps" in out.stderr


def test_ill_typed_config_value_fails_with_the_key_named(tmp_path):
    out = _train_cli("--workdir", str(tmp_path), "--config.train.steps=many")
    assert out.returncode == 2 and "train.steps" in out.stderr


def _tables_run(tmp_path, users: str, items: str, events: str):
    data = tmp_path / "data"
    data.mkdir()
    for name, text in (("users", users), ("items", items), ("events", events)):
        (data / f"{name}.csv").write_text(text)
    return _train_cli("--workdir", str(tmp_path / "run"), "--config.data.format=tables", f"--config.data.path={data}")


def test_malformed_events_file_fails_naming_file_and_line(tmp_path):
    out = _tables_run(tmp_path, "user_id,country\nu1,fr\nu2,de\n", "item_id,text\ni1,red shoes\ni2,blue hat\n",
                      "user_id,item_id,timestamp\nu1,i1,100\nu2,i2,yesterday\n")
    assert out.returncode == 2
    assert "events.csv" in out.stderr and "line 3" in out.stderr and "timestamp" in out.stderr


def test_empty_users_table_fails_clearly(tmp_path):
    out = _tables_run(tmp_path, "user_id,country\n", "item_id,text\ni1,red shoes\n", "user_id,item_id,timestamp\n")
    assert out.returncode == 2
    assert "users.csv" in out.stderr and "empty" in out.stderr.lower()


def test_nan_in_a_batch_is_reported_with_its_row():
    from u2qt.train.loop import check_batch
    batch = {"user_index": np.array([7, 8, 9]), "num": np.array([[0.0], [np.nan], [1.0]], np.float32)}
    with pytest.raises(FloatingPointError, match=r"^step 3: batch key 'num' holds NaN/Inf in batch rows \[1\]$"):
        check_batch(batch, step=3)


@pytest.mark.heavy
def test_synthetic_run_recovers_the_planted_types(tmp_path, compile_cache):
    """The default synthetic config at half its users and 40% of its steps: the first shared code
    must separate the planted user types (purity >= 0.8)."""
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "default.py"))
    for key, value in {"data.synthetic_users": "1500", "train.steps": "200", "quantizer.kmeans_at_step": "70",
                       "train.eval_every": "1000", "train.checkpoint_every": "1000", "train.progress": "False"}.items():
        config_lib.apply_override(cfg, key, value)
    summary = train(cfg, tmp_path)
    assert summary["purity_first_code"] >= 0.8, summary
    # No codebook collapse (a collapsed level uses a handful of its 64 codes). At 300 steps this run
    # used at least 58 codes of its last level on the machines of earlier sessions and 57 on another
    # (XLA's float rounding differs between CPU types); at 200 steps 60 (purity 0.925), so the bound
    # leaves room below that.
    assert min(summary["views"]["shared"]["usage"]) >= 0.85, summary["views"]["shared"]


def test_a_bad_config_is_refused_before_the_workdir_is_touched(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"train\.keep_checkpoints=0 must be an integer >= 1"):
        train(runlocal(**{"train.keep_checkpoints": 0}), tmp_path / "run")
    assert not os.path.exists(tmp_path / "run")  # nothing read, written or compiled
    out = _train_cli("--workdir", str(tmp_path / "cli"), "--config.quantizer.kmeans_at_step=500")
    assert out.returncode == 2 and "quantizer.kmeans_at_step=500 must be < train.steps=500" in out.stderr
    assert "Traceback" not in out.stderr and not os.path.exists(tmp_path / "cli")


def test_a_non_finite_state_is_never_saved():
    from u2qt.train import checkpoint
    state = {"step": jnp.asarray(7), "params": {"w": jnp.ones((3,))}, "opt_state": (jnp.zeros((3,)),)}
    checkpoint.check_finite(state, 8, None)  # finite: nothing happens
    poisoned = dict(state, opt_state=(jnp.asarray([0.0, jnp.nan, 0.0]),))
    with pytest.raises(FloatingPointError, match=r"^step 8: the train state holds NaN/Inf, so it was not saved; "
                                                 r"the checkpoint of step 4 stays the resume point"):
        checkpoint.check_finite(poisoned, 8, 4)
    with pytest.raises(FloatingPointError, match="no checkpoint was written"):
        checkpoint.check_finite(poisoned, 8, None)
    # Before the first evaluation the best-so-far score is the -inf sentinel: a checkpoint then is fine
    # (this stopped a TIGER run whose first checkpoint came before its first evaluation) ...
    best = {"params": {"w": jnp.ones((3,))}, "value": jnp.asarray(-jnp.inf), "step": jnp.asarray(0)}
    checkpoint.check_finite(dict(state, best=best), 8, None)
    with pytest.raises(FloatingPointError):  # ... but not NaN in the kept best parameters
        checkpoint.check_finite(dict(state, best=dict(best, params={"w": jnp.asarray([jnp.nan, 0.0, 0.0])})), 8, None)


def test_a_second_run_on_a_workdir_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path):
    import json as json_lib
    import socket
    from u2qt.train.workdir import LOCK, lock_workdir, release_workdir
    work = tmp_path / "run"
    work.mkdir()
    held = lock_workdir(str(work))
    assert json_lib.load(open(held))["pid"] == os.getpid()
    # This process holds it and is alive: a second run is refused, naming the holder.
    with pytest.raises(WorkdirError, match=rf"in use by the run of pid {os.getpid()} on host"):
        lock_workdir(str(work))
    release_workdir(held)
    assert not os.path.exists(held)
    # A lock left by a process that has died (kill -9) is taken over.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (work / LOCK).write_text(json_lib.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    taken = lock_workdir(str(work))
    assert json_lib.load(open(taken))["pid"] == os.getpid()
    release_workdir(taken)


def test_metrics_log_holds_no_step_twice_after_a_resume(tmp_path):
    from u2qt.train.workdir import MetricsWriter
    rows = [(10, "train"), (20, "train"), (20, "eval"), (30, "train"), (40, "train"), (40, "final")]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "split": p, "loss": 1.0}) + "\n"
                                                    for s, p in rows) + '{"step": 5')  # a line cut by a kill
    writer = MetricsWriter(str(tmp_path), resume_step=20)  # the newest checkpoint is step 20
    writer.write(30, "train", {"loss": 0.5})
    writer.close()
    got = [(r["step"], r["split"]) for r in map(json.loads, open(tmp_path / "metrics.jsonl"))]
    assert got == [(10, "train"), (20, "train"), (20, "eval"), (30, "train")]


def test_dispatched_steps_wait_once_more_than_two_are_queued_and_drain_in_order():
    from u2qt.train.step import InFlight

    waited = []

    class Step:  # a step's output; jax.block_until_ready calls this on each leaf
        def __init__(self, n):
            self.n = n

        def block_until_ready(self):
            waited.append(self.n)
            return self

    q = InFlight(limit=2)
    q.add({"loss": Step(0)})
    q.add({"loss": Step(1)})
    assert waited == []  # two queued: the host runs ahead
    q.add({"loss": Step(2)})
    assert waited == [0]  # a third: the host waits for the oldest
    q.add({"loss": Step(3)})
    assert waited == [0, 1]
    q.drain()  # before an evaluation: every queued step, oldest first
    assert waited == [0, 1, 2, 3]
    q.drain()
    assert waited == [0, 1, 2, 3]
