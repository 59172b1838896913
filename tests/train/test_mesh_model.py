"""The mesh's model axis (config ``mesh.model``, ``u2qt/train/sharding.py``): the sharding rules,
the optimizer state following its parameter, the check that catches a table left replicated,
and, on 8 fake CPU devices, runs split 2 data × 4 model that match the replicated run, resume,
and need less memory per device by the expected factor."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import REPO
from u2qt.errors import ConfigError
from u2qt.train import sharding
from u2qt.train.sharding import Placement, plan

sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, os.path.join(REPO, "tests", "train"))


def shapes(**tree):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, np.float32), tree, is_leaf=lambda x: isinstance(x, tuple))


def test_rules_split_item_tables_by_rows_and_large_codebooks_by_code():
    params = shapes(sasrec={"id_embedding": (256, 32), "position_embedding": (20, 32)},
                    behaviour={"item_embedding": {"embedding": (2421, 32)}}, item_output=(2421, 30),
                    codebooks_shared=(3, 16384, 32), codebooks_text=(2, 64, 16), dense={"kernel": (384, 32)})
    d = plan(params, 4)
    assert d["sasrec/id_embedding"].spec == P("model", None)  # 256 rows split by rows
    assert d["behaviour/item_embedding/embedding"].spec == P(None, "model")  # 2421 rows do not divide: columns
    assert d["item_output"].spec == P() and "does not divide by mesh.model=4" in d["item_output"].note
    assert d["codebooks_shared"].spec == P(None, "model", None)
    assert d["codebooks_text"].spec == P() and "64 < 16,384" in d["codebooks_text"].note
    assert d["codebooks_text"].rule is not None  # covered (deliberately replicated), not forgotten
    assert d["dense/kernel"].rule is None and d["sasrec/position_embedding"].rule is None
    assert plan(params, 1)["sasrec/id_embedding"].spec == P("model", None)  # an axis of size 1: same code path


def test_optimizer_moments_and_best_copy_follow_their_parameter():
    import optax
    params = shapes(sasrec={"id_embedding": (8, 4), "w": (4, 4)}, codebooks_x=(2, 16, 4))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)))
    abstract = {"params": params, "opt_state": jax.eval_shape(tx.init, params), "usage": {"x": shapes(u=(2, 16))["u"]},
                "best": {"params": params, "value": shapes(v=())["v"]}}
    old = sharding.CODEBOOK_MIN_CODES
    sharding.CODEBOOK_MIN_CODES = 16  # read when planning
    try:
        placement = Placement(8, 1)
        out = placement.state_shardings(abstract)
    finally:
        sharding.CODEBOOK_MIN_CODES = old
    specs = {sharding.path_name(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(out)}
    for prefix in ("params/", "opt_state/mu/", "opt_state/nu/", "best/params/"):
        assert specs[prefix + "sasrec/id_embedding"] == P("model", None), prefix
        assert specs[prefix + "codebooks_x"] == P(None, "model", None), prefix
        assert specs[prefix + "sasrec/w"] == P(), prefix
    assert specs["usage/x"] == P() and specs["best/value"] == P() and specs["opt_state/count"] == P()


def test_a_table_meant_to_be_split_but_replicated_is_caught_by_path():
    placement = Placement(8, 1)
    params = {"sasrec": {"id_embedding": np.zeros((8, 4), np.float32)}, "w": np.zeros((4,), np.float32)}
    shardings = placement.state_shardings({"params": params})
    good = jax.device_put({"params": params}, shardings)
    placement.check_state(good, "a good state")  # laid out as planned: nothing raised
    planted = jax.device_put({"params": params}, jax.tree.map(lambda _: placement.replicated, shardings))
    with pytest.raises(AssertionError, match=r"restored state: 1 array\(s\) meant to be split over \"model\" are "
                                             r"not: \['params'\]\['sasrec'\]\['id_embedding'\] \(meant \('model', None\)"):
        placement.check_state(planted, "restored state")


def test_large_parameters_no_rule_covers_are_named():
    lines = []
    big = shapes(encoder={"kernel": (1024, 1025)}, small=(4, 4), sasrec={"id_embedding": (2049, 33)})
    sharding.describe(plan(big, 2), 2, lines.append)
    assert any("sasrec/id_embedding [2049, 33] stays replicated, though a rule covers it (item-ID embedding" in line
               and "(None, 'model'): dimension 1 (33) does not divide by mesh.model=2" in line
               for line in lines), lines
    assert any("1 parameter(s) over 1,048,576 elements that no rule covers stay replicated on every device: "
               "encoder/kernel [1024, 1025]" in line for line in lines), lines


def test_a_model_axis_that_does_not_divide_the_devices_is_refused_before_the_workdir_is_touched(tmp_path):
    from test_loop import runlocal, train
    n = len(jax.devices())
    with pytest.raises(ConfigError, match=rf"^config mesh.model={n + 1} must divide the {n} devices"):
        train(runlocal(**{"mesh.model": n + 1}), tmp_path / "run")
    assert not os.path.exists(tmp_path / "run")


# ------------------------------------------------------------------ 8 fake devices, in a subprocess
STEPS, HALT = 6, 3
COMMON = ["--config.train.epochs=0", f"--config.train.steps={STEPS}", "--config.train.batch_size=16",
          "--config.train.log_every=1", "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
          "--config.train.progress=False"]
# A recommender (SASRec over item IDs: 255 items, so the item table's 256 rows split by rows) and a
# tokenizer (the plain RQ-VAE over item text; its codebooks of 8 codes are split over "model" as
# 16k+ ones are, the threshold lowered for the test).
RUNS = {"recommender": ["--config", "configs/amazon.py:lcrec,id,runlocal"],
        "tokenizer": ["--config", "configs/amazon.py:lcrec,rqvae,runlocal", "--config.quantizer.item_codes=8"]}
DRIVER = ("import sys; sys.path.insert(0, sys.argv[1])\n"
          "from u2qt.train import sharding; sharding.CODEBOOK_MIN_CODES = 8\n"
          "from u2qt.train.workdir import enable_compilation_cache; enable_compilation_cache()\n"
          "import importlib.util, json, jax; assert len(jax.devices()) == 8, jax.devices()\n"
          "spec = importlib.util.spec_from_file_location('train_cli', sys.argv[1] + '/train.py')\n"
          "cli = importlib.util.module_from_spec(spec); spec.loader.exec_module(cli)\n"
          "for args in json.loads(sys.argv[2]): assert cli.main(args) == 0, args\n")


def run_on_eight_devices(runs: list[list[str]]) -> str:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", DRIVER, REPO, json.dumps(runs)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def assert_same_state(a: dict, b: dict, kind: str) -> None:
    """Parameters equal to float32 tolerance. Splitting a table over "model" changes only the order
    of float sums (the softmax's normalizer and the gradient's all-reduce add per-shard partial sums):
    rtol 1e-4, atol 1e-5, as 2 processes × 4 devices vs 1 × 8 (tests/train/test_multiprocess.py)."""
    from test_multiprocess import _leaves
    assert int(a["step"]) == int(b["step"]) == STEPS
    for (path, x), (_, y) in zip(_leaves(a["params"]), _leaves(b["params"])):
        if path.endswith("/key/bias"):  # the softmax cancels it: its updates are rounding noise (see there)
            assert np.abs(x).max() < 1e-3 and np.abs(y).max() < 1e-3, (kind, path)
            continue
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=f"{kind} params {path}")


@pytest.mark.heavy
def test_recommender_split_two_by_four_matches_the_replicated_run_and_resumes(tmp_path, compile_cache):
    from bench_mesh_model import write_lcrec
    from test_multiprocess import _assert_numbers_close, final_state
    data = write_lcrec(str(tmp_path / "lc"), items=255, users=300)
    command = lambda workdir, model, *extra: [*RUNS["recommender"], f"--workdir={tmp_path / workdir}",
                                              f"--config.data.path={data}", f"--config.data.cache_dir={tmp_path / 'cache'}",
                                              *COMMON, f"--config.mesh.model={model}", *extra]
    halt = f"--config.train.halt_after_step={HALT}"
    log = run_on_eight_devices([command("m1", 1), command("m4", 4), command("m2", 2, halt), command("m2", 2, halt)])
    assert "sharding: sasrec/id_embedding [256, 32] split as ('model', None) over mesh.model=4" in log
    assert "mesh data 2 × model 4" in log and "resumed from the checkpoint of step 3" in log
    one = final_state(tmp_path / "m1")
    for other in ("m4", "m2"):
        assert_same_state(final_state(tmp_path / other), one, f"recommender {other}")
        _assert_numbers_close(*(json.load(open(tmp_path / w / "summary.json")) for w in (other, "m1")), other)


@pytest.mark.heavy
def test_tokenizer_with_split_codebooks_matches_the_replicated_run_and_resumes_on_another_layout(tmp_path,
                                                                                                compile_cache):
    from bench_mesh_model import write_lcrec
    from test_multiprocess import _assert_numbers_close, final_state
    import pandas as pd
    data = write_lcrec(str(tmp_path / "lc"), items=200, users=300)
    command = lambda workdir, model, *extra: [*RUNS["tokenizer"], f"--workdir={tmp_path / workdir}",
                                              f"--config.data.path={data}", f"--config.data.cache_dir={tmp_path / 'cache'}",
                                              *COMMON, f"--config.mesh.model={model}", *extra]
    halt = f"--config.train.halt_after_step={HALT}"
    # Halted split over 4, resumed split over 2: the checkpoint restores onto another layout.
    log = run_on_eight_devices([command("m1", 1), command("m4", 4, halt), command("m4", 2, halt)])
    assert "sharding: codebooks_item [3, 8, 32] split as (None, 'model', None) over mesh.model=4" in log, log
    assert "resumed from the checkpoint of step 3" in log
    assert_same_state(final_state(tmp_path / "m4"), final_state(tmp_path / "m1"), "tokenizer")
    _assert_numbers_close(*(json.load(open(tmp_path / w / "summary.json")) for w in ("m4", "m1")), "tokenizer")
    ids = [pd.read_parquet(tmp_path / w / "semantic_ids.parquet") for w in ("m4", "m1")]
    pd.testing.assert_frame_equal(ids[0], ids[1])
    books = [np.load(tmp_path / w / "codebooks.npz")["item"] for w in ("m4", "m1")]
    np.testing.assert_allclose(books[0], books[1], rtol=1e-4, atol=1e-5)


@pytest.mark.heavy
def test_splitting_the_item_table_over_four_cuts_its_bytes_per_device_by_four(tmp_path):
    """XLA's memory analysis of the compiled step (bytes, not time): with the table split over 4,
    each device's arguments shrink by 3/4 of the table's 4 copies (parameter, Adam moments, best)."""
    out = tmp_path / "mem.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_mesh_model.py"), "--items", "16383",
                          "--models", "1,4", "--dim", "32", "--json", str(out)], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    one, four = json.load(open(out))
    assert one["split"] == four["split"] == {"sasrec/id_embedding": ["model", None]}
    table = 16384 * 32 * 4 * 4  # rows × d × float32 × 4 copies = 8 MiB
    assert one["table_bytes_whole"] == table
    saved = one["argument_bytes"] - four["argument_bytes"]
    assert saved == pytest.approx(table * 3 / 4, rel=0.02), (one, four)
    assert four["argument_bytes"] < 0.4 * one["argument_bytes"], (one, four)  # the table dominates the state


KERNEL_CHECK = """
import sys; sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from jax.sharding import NamedSharding
from u2qt.kernels.codebook_assign import assign, assign_residual, reference
from u2qt.train.sharding import Placement
placement = Placement(16, 4)  # 2 data x 4 model
x = jax.random.normal(jax.random.key(0), (64, 24))
books = 0.5 * jax.random.normal(jax.random.key(1), (3, 40, 24))
want_codes, want_dist = reference.assign_residual(x, books)
want_index, _ = reference.assign(x, books[0])
with jax.set_mesh(placement.mesh):
    xs = jax.device_put(x, placement.batch)
    split = jax.device_put(books, NamedSharding(placement.mesh, jax.P(None, "model", None)))
    for impl in ("reference", "chunked"):
        codes, dist = jax.jit(lambda a, c: assign_residual(a, c, implementation=impl))(xs, split)
        np.testing.assert_array_equal(np.asarray(codes), np.asarray(want_codes))
        np.testing.assert_allclose(np.asarray(dist), np.asarray(want_dist), rtol=1e-5, atol=1e-5)
        index, _ = jax.jit(lambda a, c: assign(a, c[0], implementation=impl))(xs, split)
        np.testing.assert_array_equal(np.asarray(index), np.asarray(want_index))
print("same codes")
"""


def test_nearest_codes_of_a_codebook_split_over_model_are_those_of_the_whole_one():
    """The assignment kernels run under shard_map over "data"; a codebook split over "model" (K)
    reaches them whole (XLA gathers it), so the codes are exactly the unsplit ones."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", KERNEL_CHECK, REPO], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and "same codes" in out.stdout, out.stderr[-3000:]
