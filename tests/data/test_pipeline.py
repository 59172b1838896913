"""TFDS array_record round trip and the grain pipeline (determinism, state, sharding, export order)."""

import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from u2qt.data import tfds_builder
from u2qt.data.examples import build_examples
from u2qt.data.pipeline import ArraySource, in_order_batches, make_train_iterator
from u2qt.data.synthetic import make_synthetic
from u2qt.data.tfds_builder import build_data_source, examples_fingerprint


@pytest.fixture(scope="module")
def examples():
    tables, _ = make_synthetic(300, 60, seed=1)
    return build_examples(tables, max_events=12, holdout=3, min_input=3)[1]


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


# --- TFDS ----------------------------------------------------------------------------------


def test_tfds_round_trip_and_cache(tmp_path, examples):
    fp = examples_fingerprint(examples)
    source = build_data_source(examples, str(tmp_path), fp)
    assert len(source) == 300
    for i in (0, 17, 299):
        record = source[i]
        assert record.keys() == examples.keys()
        for k, v in examples.items():
            assert record[k].dtype == v.dtype and record[k].shape == v.shape[1:], k
            np.testing.assert_array_equal(record[k], v[i])
    prepared = tmp_path / "examples" / fp / tfds_builder.VERSION
    files = sorted(os.listdir(prepared))
    assert any(".array_record" in f for f in files)
    mtimes = {f: os.path.getmtime(prepared / f) for f in files}
    again = build_data_source(examples, str(tmp_path), fp)  # cache hit: nothing rewritten
    assert {f: os.path.getmtime(prepared / f) for f in files} == mtimes
    np.testing.assert_array_equal(again[5]["items"], examples["items"][5])
    with pytest.raises(ValueError, match="expected 10"):
        build_data_source({k: v[:10] for k, v in examples.items()}, str(tmp_path), fp)


def test_tfds_interrupted_build_leaves_nothing(tmp_path, examples, monkeypatch):
    def broken(self):
        yield 0, {k: v[0] for k, v in self._examples.items()}
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(tfds_builder.Examples, "_generate_examples", broken)
        with pytest.raises(KeyboardInterrupt):
            build_data_source(examples, str(tmp_path), "fp1")
    config_dir = tmp_path / "examples" / "fp1"
    assert not (config_dir / tfds_builder.VERSION).exists()  # nothing that looks prepared
    assert not [p for p in os.listdir(config_dir) if "incomplete" in p]  # the temporary dir is gone
    # A process killed outright leaves its temporary dir behind; it must not get in the way.
    (config_dir / f"incomplete.DEAD_{tfds_builder.VERSION}").mkdir()
    source = build_data_source(examples, str(tmp_path), "fp1")
    assert len(source) == 300
    np.testing.assert_array_equal(source[299]["items"], examples["items"][299])


def test_tfds_concurrent_builds_of_one_fingerprint_take_turns(tmp_path, examples, monkeypatch):
    """Two runs started together on one cache used to race: both built, the second rename failed."""
    import threading
    import time
    real = tfds_builder.Examples._generate_examples
    builds = []

    def slow(self):  # a wide window in which the other thread would start its own build
        builds.append(threading.get_ident())
        time.sleep(0.5)
        yield from real(self)

    monkeypatch.setattr(tfds_builder.Examples, "_generate_examples", slow)
    results, errors = [], []

    def build():
        try:
            results.append(build_data_source(examples, str(tmp_path), "shared_fp"))
        except Exception as e:  # noqa: BLE001 — reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(builds) == 1  # the second caller found the first one's data set
    assert [len(r) for r in results] == [300, 300]
    np.testing.assert_array_equal(results[1][7]["items"], examples["items"][7])


def test_grain_reads_the_tfds_source(tmp_path, examples):
    source = build_data_source(examples, str(tmp_path), "fp2")
    a = take(make_train_iterator(source, global_batch_size=32, seed=7), 3)
    b = take(make_train_iterator(ArraySource(examples), global_batch_size=32, seed=7), 3)
    assert_batches_equal(a, b)


# --- grain ---------------------------------------------------------------------------------


def test_train_iterator_batches_and_determinism(examples):
    source = ArraySource(examples)
    a = take(make_train_iterator(source, global_batch_size=32, seed=7), 4)
    b = take(make_train_iterator(source, global_batch_size=32, seed=7), 4)
    c = take(make_train_iterator(source, global_batch_size=32, seed=8), 4)
    assert_batches_equal(a, b)
    assert not np.array_equal(a[0]["user_index"], c[0]["user_index"])
    for k, v in examples.items():
        assert a[0][k].shape == (32, *v.shape[1:]) and a[0][k].dtype == v.dtype
    u = a[0]["user_index"]
    np.testing.assert_array_equal(a[0]["items"], examples["items"][u])


def test_epochs_are_permutations_shuffled_differently(examples):
    it = make_train_iterator(ArraySource(examples), global_batch_size=30, seed=0)
    seen = np.concatenate([b["user_index"] for b in take(it, 20)])  # two epochs of 300
    assert sorted(seen[:300]) == list(range(300)) and sorted(seen[300:]) == list(range(300))
    assert not np.array_equal(seen[:300], seen[300:])


def test_state_round_trip(examples):
    source = ArraySource(examples)
    it = make_train_iterator(source, global_batch_size=16, seed=3)
    take(it, 5)
    state = it.get_state()
    expected = take(it, 4)
    fresh = make_train_iterator(source, global_batch_size=16, seed=3)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 4), expected)


def test_orbax_checkpoint_round_trip(tmp_path, examples):
    source = ArraySource(examples)
    it = make_train_iterator(source, global_batch_size=16, seed=3)
    take(it, 25)  # past the first epoch (300 / 16 < 25)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        mngr.save(25, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = take(it, 3)
    fresh = make_train_iterator(source, global_batch_size=16, seed=3)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        restored = mngr.restore(25, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    assert_batches_equal(take(restored["data_iter"], 3), expected)


def test_per_process_shards_are_disjoint_and_make_the_global_batch(examples):
    source = ArraySource(examples)
    single = take(make_train_iterator(source, global_batch_size=24, seed=5), 3)
    shards = [take(make_train_iterator(source, global_batch_size=24, seed=5, process_index=p, process_count=3), 3)
              for p in range(3)]
    for step in range(3):
        parts = [s[step]["user_index"] for s in shards]
        assert all(len(p) == 8 for p in parts)
        assert not set(parts[0]) & set(parts[1]) and not set(parts[1]) & set(parts[2]) and not set(parts[0]) & set(parts[2])
        # Process p's block is rows [p·B/P, (p+1)·B/P) of the global batch: side by side, in order.
        np.testing.assert_array_equal(np.concatenate(parts), single[step]["user_index"])
    with pytest.raises(ValueError, match="divisible"):
        make_train_iterator(source, global_batch_size=25, seed=5, process_count=2)


def test_in_order_batches_pad_the_last_batch(examples):
    batches = list(in_order_batches(examples, 128))
    assert len(batches) == 3
    assert all(b["items"].shape == (128, 12) for b in batches)
    assert batches[-1]["valid"].sum() == 300 - 256 and batches[0]["valid"].all()
    assert batches[-1]["valid"].dtype == bool
    assert not batches[-1]["items"][~batches[-1]["valid"]].any()
    order = np.concatenate([b["user_index"][b["valid"]] for b in batches])
    np.testing.assert_array_equal(order, np.arange(300))


def test_examples_with_an_empty_field_fingerprint_and_round_trip(tmp_path):
    # MovieLens users have no numeric column: `num` is [U, 0]; hashing and TFDS must take it.
    examples = {"num": np.zeros((5, 0), np.float32), "length": np.arange(5, dtype=np.int32)}
    fp = examples_fingerprint(examples)
    assert fp != examples_fingerprint({**examples, "length": np.arange(1, 6, dtype=np.int32)})
    source = build_data_source(examples, str(tmp_path), fp)
    assert len(source) == 5 and source[3]["num"].shape == (0,) and int(source[3]["length"]) == 3
