"""Training on several processes (JAX's multi-controller runtime; gloo collectives between CPU
processes): 2 processes × 4 CPU devices train a tokenizer and a recommender, halt, resume from
their checkpoints and end with the parameters and outputs of 1 process × 8 devices; only process
0 writes the workdir's files, and each process reads only its own rows of every batch. The
two-process recommender runs on a mesh of data 4 × model 2 (its item table and output layer split
by rows over "model" within each process, the data axis across both; u2qt/train/sharding.py), the
one-process run on data 8 × model 1."""
import collections
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

DRIVER = os.path.join(REPO, "tests", "train", "multiprocess_driver.py")
STEPS, HALT, BATCH = 6, 3, 16
COMMON = [f"--config.train.epochs=0", f"--config.train.steps={STEPS}", f"--config.train.batch_size={BATCH}",
          "--config.train.log_every=1", "--config.train.eval_every=3", "--config.train.checkpoint_every=3"]
# The tokenizer: the plain RQ-VAE over item text, its examples streamed through grain (the per-process
# shards); the recommender: SASRec over item IDs, its rows drawn on the devices, evaluated on
# validation cases (the best step kept) and reported on test cases.
RUNS = {"tokenizer": ["--config", "configs/amazon.py:lcrec,rqvae,runlocal", "--config.quantizer.item_codes=8",
                      "--config.data.device_mb=0"],
        "recommender": ["--config", "configs/amazon.py:lcrec,id,runlocal"]}


def write_lcrec(root):
    """An LC-Rec directory: 200 items with short texts, 300 users with 6-10 interactions each."""
    rng = np.random.default_rng(0)
    path = os.path.join(root, "lc")
    os.makedirs(path)
    inter = {str(u): [str(i) for i in rng.choice(200, rng.integers(6, 11), replace=False)] for u in range(300)}
    items = {str(i): {"title": f"thing {i} of kind {i % 7}", "brand": f"b{i % 5}", "categories": f"c{i % 3}",
                      "description": "d"} for i in range(200)}
    json.dump(inter, open(os.path.join(path, "Toy.inter.json"), "w"))
    json.dump(items, open(os.path.join(path, "Toy.item.json"), "w"))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(tmp, name: str, processes: int, runs: list[list[str]]) -> list[list[dict]]:
    """Runs the train.py commands ``runs`` one after the other in ``processes`` processes with
    8 / processes CPU devices each; returns each process's records (multiprocess_driver.py) and
    checks that only process 0 printed the run's log."""
    record = tmp / f"record_{name}"
    record.mkdir()
    args = [a for run in runs for a in ["--then", *run]][1:]
    port, procs = free_port(), []
    for i in range(processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}")
        if processes > 1:  # the coordinator settings as the environment gives them (flags work too)
            env.update(U2QT_COORDINATOR_ADDRESS=f"localhost:{port}", U2QT_NUM_PROCESSES=str(processes),
                       U2QT_PROCESS_ID=str(i))
        out = open(record / f"out_{i}.txt", "w")
        procs.append(subprocess.Popen([sys.executable, DRIVER, str(record), *args], cwd=REPO, env=env,
                                      stdout=out, stderr=subprocess.STDOUT, text=True))
    for i, p in enumerate(procs):
        p.wait(timeout=1200)
        assert p.returncode == 0, (record / f"out_{i}.txt").read_text()[-4000:]
    logs = [(record / f"out_{i}.txt").read_text() for i in range(processes)]
    assert "model: " in logs[0] and all("model: " not in log for log in logs[1:])
    return [json.load(open(record / f"process_{i}.json")) for i in range(processes)]


def final_state(workdir) -> dict:
    """The newest checkpoint's train state, as numpy arrays."""
    import jax
    import orbax.checkpoint as ocp
    step = max(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
    path = workdir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    return checkpointer.restore(path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))


def stream_blocks(rows: int, process: int, processes: int, steps: range) -> collections.Counter:
    """The example indices process ``process`` must feed at ``steps``: its block of each global
    batch of the single-process stream."""
    from u2qt.data.pipeline import ArraySource, make_train_iterator
    it = make_train_iterator(ArraySource({"i": np.arange(rows)}), global_batch_size=BATCH, seed=0)
    batches = [next(it)["i"] for _ in range(steps.stop)]
    share = BATCH // processes
    return collections.Counter(int(i) for s in steps for i in batches[s][process * share:(process + 1) * share])


@pytest.mark.heavy
def test_two_processes_train_halt_resume_and_match_one_process(tmp_path, compile_cache):
    data = write_lcrec(str(tmp_path))
    text_cache = tmp_path / "text_cache"  # item-text embeddings, shared by every run

    def command(kind, workdir, *extra):
        return [*RUNS[kind], f"--workdir={workdir}", f"--config.data.path={data}",
                f"--config.data.cache_dir={text_cache}", *COMMON, *extra]

    two, one = tmp_path / "two", tmp_path / "one"
    # The recommender's tables split over a model axis of 2 (within each process; data across both).
    split = {"tokenizer": [], "recommender": ["--config.mesh.model=2"]}
    halted = launch(tmp_path, "two_halted", 2,
                    [command(k, two / k, f"--config.train.halt_after_step={HALT}", *split[k]) for k in RUNS])
    resumed = launch(tmp_path, "two_resumed", 2,
                     [command(k, two / k, f"--config.train.halt_after_step={HALT}", *split[k]) for k in RUNS])
    launch(tmp_path, "one", 1, [command(k, one / k) for k in RUNS])
    assert "8 cpu device(s) of 2 processes, mesh data 4 × model 2" in (tmp_path / "record_two_halted" / "out_0.txt").read_text()

    # The same parameters (from the final checkpoints) and outputs. Both layouts run one program
    # over 8 devices on the same global batches in the same order; only the all-reduce of the
    # gradients sums its 8 partial sums in another order (gloo between processes): float32
    # rounding, measured ≤ 1.4e-7 absolute on every weight after 6 steps and 4.4e-6 on the
    # codebooks (k-means and dead-code resets amplify it), well inside these bounds.
    for kind in RUNS:
        a, b = final_state(two / kind), final_state(one / kind)
        assert int(a["step"]) == int(b["step"]) == STEPS
        for (path, x), y in zip(_leaves(a["params"]), [y for _, y in _leaves(b["params"])]):
            if path.endswith("/key/bias"):
                # Attention's key bias adds the same q·b to every key's logit: the softmax cancels it,
                # so its gradient is 0 but for rounding, and Adam (dividing by the gradient's RMS)
                # moves it by that noise alone, differently in each layout. It stays near its zero start.
                assert np.abs(x).max() < 1e-3 and np.abs(y).max() < 1e-3, (kind, path)
                continue
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=f"{kind} params {path}")
        sa, sb = (json.load(open(w / kind / "summary.json")) for w in (two, one))
        _assert_numbers_close(sa, sb, kind)
    ids = [pd.read_parquet(w / "tokenizer" / "semantic_ids.parquet") for w in (two, one)]
    pd.testing.assert_frame_equal(ids[0], ids[1])

    # Each process read only its own block of every global batch (the streamed tokenizer).
    rows = len(pd.read_parquet(one / "tokenizer" / "semantic_ids.parquet"))  # the items are its examples
    ahead = 16  # grain reads a few batches ahead of the step (prefetch and threads)
    for records, first, last in ((halted, 0, HALT), (resumed, HALT, STEPS)):
        for p, process_runs in enumerate(records):
            read = collections.Counter(process_runs[0]["read"])
            assert not stream_blocks(rows, p, 2, range(first, last)) - read, f"process {p} missed rows it feeds"
            assert not read - stream_blocks(rows, p, 2, range(first, last + ahead)), f"process {p} read others' rows"

    # Only process 0 wrote the workdir's files; the others wrote only their part of the checkpoints.
    for records in (halted, resumed):
        for r, kind in enumerate(RUNS):
            ours = lambda paths: [w for w in paths if w.startswith(str(two / kind) + os.sep)]
            main = ours(records[0][r]["written"])
            assert {os.path.join(str(two / kind), n) for n in ("metrics.jsonl", "run.lock")} <= set(main), main
            others = [w for w in ours(records[1][r]["written"]) if not w.startswith(str(two / kind / "checkpoints"))]
            assert others == [], others
    finished = [w for w in resumed[0][0]["written"] if w.startswith(str(two / "tokenizer"))]
    for name in ("summary.json", "training.png", "semantic_ids.parquet", "codebooks.npz"):
        assert os.path.join(str(two / "tokenizer"), name) in finished, name


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        return [leaf for k in sorted(tree) for leaf in _leaves(tree[k], f"{prefix}/{k}")]
    return [(prefix, np.asarray(tree))]


def _assert_numbers_close(a, b, where):
    """Every number of two summaries (but the wall time) equal to float tolerance."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k != "wall_seconds":
                _assert_numbers_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_numbers_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), where
    else:
        assert a == b, where


def test_launch_settings_come_from_flags_then_the_environment():
    from u2qt.errors import ConfigError
    from u2qt.train.distributed import launch_settings
    args = ["--config", "c.py", "--config.train.steps=3"]
    assert launch_settings(args, {}) == (None, args)  # one process: nothing to start, argv untouched
    settings, rest = launch_settings(["--coordinator_address", "h:1", *args, "--num_processes=2", "--process_id=1"], {})
    assert settings == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1} and rest == args
    env = {"U2QT_COORDINATOR_ADDRESS": "e:2", "U2QT_NUM_PROCESSES": "4", "U2QT_PROCESS_ID": "3"}
    assert launch_settings(["--process_id=0"], env)[0] == {"coordinator_address": "e:2", "num_processes": 4,
                                                          "process_id": 0}  # a flag wins over its variable
    assert launch_settings(["--distributed"], {})[0] == {}  # all detected by jax (TPU pod, SLURM, ...)
    assert launch_settings([], {"U2QT_DISTRIBUTED": "1"})[0] == {}
    with pytest.raises(ConfigError, match="must be an integer"):
        launch_settings(["--num_processes=two"], {})
    with pytest.raises(ConfigError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
        launch_settings(["--num_processes=2", "--process_id=2"], {})
    with pytest.raises(ConfigError, match="needs a value"):
        launch_settings(["--coordinator_address"], {})
