"""Streamed examples (u2qt/data/stream.py): the chunked build equals the in-memory arrays, the lazy
columns read like arrays, an interrupted build is redone, a corrupt shard is named, memory stays
bounded while building, and training on them matches the in-memory path."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from u2qt import defaults
from u2qt.data.examples import DatasetSpec, build_examples, encode_examples
from u2qt.data.load import load_data, load_streamed
from u2qt.data.pipeline import in_order_batches, make_train_iterator
from u2qt.data.stream import MANIFEST, StreamedExamples, open_or_build, write_examples
from u2qt.data.synthetic import SyntheticUserIds, make_synthetic, synthetic_chunks
from u2qt.data.tables import DataError, Tables
from u2qt.data.tfds_builder import build_data_source, examples_fingerprint
from u2qt.train import batches as batches_lib


def data_cfg(users=700, chunk=250, **kw):
    c = defaults.user_tokenizer().data
    c.synthetic_users, c.synthetic_items, c.stream_chunk_users, c.max_events = users, 80, chunk, 12
    for k, v in kw.items():
        c[k] = v
    return c


def as_arrays(examples) -> dict:
    return {k: np.asarray(v) for k, v in examples.items()}


def assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def concat(tables: list[Tables]) -> Tables:
    return Tables(users=pd.concat([t.users for t in tables], ignore_index=True), items=tables[0].items,
                  events=pd.concat([t.events for t in tables], ignore_index=True))


# --- the build --------------------------------------------------------------------------------


def test_encode_with_a_fitted_spec_equals_build_examples():
    tables, _ = make_synthetic(300, 60, seed=1)
    spec, ex = build_examples(tables, max_events=12, holdout=3, min_input=3)
    assert_same(encode_examples(tables, spec), ex)
    # An unseen category goes to the unknown bucket; user_index counts from first_index.
    users = tables.users.copy()
    users.loc[0, "region"] = "atlantis"
    again = encode_examples(Tables(users, tables.items, tables.events), spec, first_index=1000)
    assert again["cat"][0, spec.cat_fields.index("region")] == 0
    np.testing.assert_array_equal(again["user_index"], np.arange(1000, 1300))
    with pytest.raises(DataError, match="age"):
        encode_examples(Tables(users.drop(columns=["age"]), tables.items, tables.events), spec)


def test_streamed_build_equals_the_in_memory_arrays(tmp_path):
    cfg = data_cfg()
    data = load_streamed(cfg, str(tmp_path), log=lambda m: None)
    chunks = list(synthetic_chunks(700, 80, 8, seed=0, chunk_users=250))
    assert [len(t.users) for t, _ in chunks] == [250, 250, 200]
    spec, first = build_examples(chunks[0][0], max_events=12, holdout=cfg.holdout, min_input=cfg.min_input)
    # The same spec (fitted on the first chunk) and the same rows as encoding all users with it.
    assert data.spec == DatasetSpec(**{**json.loads(spec.to_json()), "user_ids": []})
    assert_same(as_arrays(data.examples), encode_examples(concat([t for t, _ in chunks]), spec))
    assert_same({k: v[:250] for k, v in as_arrays(data.examples).items()}, first)
    np.testing.assert_array_equal(data.user_types, np.concatenate([t for _, t in chunks]))
    assert list(data.row_ids) == [f"u{i:08d}" for i in range(700)] and data.row_ids[-1] == "u00000699"
    assert data.users_with_events == int((data.examples["length"][:] > 0).sum())
    # Deterministic: a second build (another directory) writes the same rows, fingerprint and all.
    again = load_streamed(cfg, str(tmp_path / "again"), log=lambda m: None)
    assert again.examples.fingerprint == data.examples.fingerprint
    assert examples_fingerprint(data.examples) == data.examples.fingerprint
    # One chunk holding every user (users come from per-chunk seeds: other users) is exactly
    # build_examples on them.
    whole = load_streamed(data_cfg(chunk=700), str(tmp_path), log=lambda m: None)
    (tables, _), = synthetic_chunks(700, 80, 8, seed=0, chunk_users=700)
    assert_same(as_arrays(whole.examples), build_examples(tables, max_events=12, holdout=cfg.holdout,
                                                          min_input=cfg.min_input)[1])


def test_streamed_tables_directory_equals_load_data(tmp_path):
    tables, _ = make_synthetic(300, 60, seed=2)
    for name in ("users", "items", "events"):
        getattr(tables, name).to_csv(tmp_path / f"{name}.csv", index=False)
    cfg = data_cfg(chunk=300, format="tables", path=str(tmp_path))
    memory = load_data(cfg)
    streamed = load_streamed(cfg, str(tmp_path / "cache"), log=lambda m: None)
    assert_same(as_arrays(streamed.examples), memory.examples)
    assert list(streamed.row_ids) == memory.spec.user_ids
    # In chunks: the first chunk's rows are build_examples on its users alone.
    chunked = load_streamed(data_cfg(chunk=128, format="tables", path=str(tmp_path)), str(tmp_path / "cache"),
                            log=lambda m: None)
    assert chunked.examples.rows == 300 and len(chunked.examples.read(slice(128, 256))["items"]) == 128
    assert chunked.examples.fingerprint != streamed.examples.fingerprint


# --- lazy columns and the grain source ---------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    tables, _ = make_synthetic(300, 60, seed=1)
    ex = build_examples(tables, max_events=12, holdout=3, min_input=3)[1]
    d = str(tmp_path_factory.mktemp("stream") / "rows")
    chunks = ({k: v[i:i + 70] for k, v in ex.items()} for i in range(0, 300, 70))
    return ex, write_examples(d, chunks, rows_per_shard=100, log=lambda m: None)


def test_columns_read_like_arrays(written):
    ex, streamed = written
    assert sorted(streamed) == sorted(ex) and streamed.rows == 300
    for k, v in ex.items():
        col = streamed[k]
        assert (col.shape, col.dtype, len(col), col.nbytes, col.ndim) == (v.shape, v.dtype, len(v), v.nbytes, v.ndim)
        np.testing.assert_array_equal(col[95:205], v[95:205])  # across shard boundaries (100 rows each)
        np.testing.assert_array_equal(col[[299, 0, 150, 150, -1]], v[[299, 0, 150, 150, -1]])
        np.testing.assert_array_equal(col[7], v[7])
        np.testing.assert_array_equal(col[::37], v[::37])
        np.testing.assert_array_equal(col[v.shape[0] - 5:10_000], v[-5:])
        np.testing.assert_array_equal(np.asarray(col), v)
    with pytest.raises(IndexError):
        streamed["items"][[300]]
    assert batches_lib.nbytes(streamed, ["items", "event_feats"]) == ex["items"].nbytes + ex["event_feats"].nbytes
    # The codebook hook's in-order batches and the loop's shape sample work unchanged.
    cols = {k: streamed[k] for k in ("items", "length")}
    for a, b in zip(in_order_batches(cols, 128), in_order_batches({k: ex[k] for k in cols}, 128)):
        assert_same(a, b)


def test_grain_source_gives_the_same_batches_as_the_tfds_path(written, tmp_path):
    ex, streamed = written
    source = build_data_source(streamed, str(tmp_path), examples_fingerprint(streamed))
    assert not os.path.exists(tmp_path / "examples")  # nothing rewritten: the files are the source
    tfds_source = build_data_source(ex, str(tmp_path), examples_fingerprint(ex))
    for p in range(2):
        a = make_train_iterator(source, global_batch_size=64, seed=3, process_index=p, process_count=2)
        b = make_train_iterator(tfds_source, global_batch_size=64, seed=3, process_index=p, process_count=2)
        for _ in range(6):  # past one epoch (300 rows)
            assert_same(next(a), next(b))


# --- failures ----------------------------------------------------------------------------------


def test_an_interrupted_build_is_built_again(tmp_path):
    d = str(tmp_path / "rows")
    rows = {"x": np.arange(50, dtype=np.int32), "y": np.ones((50, 3), np.float32)}

    def killed():
        yield {k: v[:20] for k, v in rows.items()}
        raise KeyboardInterrupt  # the build is killed after its first chunk

    with pytest.raises(KeyboardInterrupt):
        open_or_build(d, lambda: write_examples(d, killed(), log=lambda m: None), log=lambda m: None)
    assert os.path.exists(d) and not os.path.exists(os.path.join(d, MANIFEST))
    builds = []

    def build():
        builds.append(1)
        return write_examples(d, iter([rows]), log=lambda m: None)

    logs = []
    got = open_or_build(d, build, log=logs.append)
    assert builds == [1] and "interrupted build" in logs[0]
    np.testing.assert_array_equal(got["x"][:], rows["x"])
    open_or_build(d, build, log=logs.append)  # complete now: read, not rebuilt
    assert builds == [1]


def test_a_corrupt_shard_is_a_data_error_naming_the_file(written, tmp_path):
    ex, streamed = written
    d = str(tmp_path / "rows")
    write_examples(d, iter([{k: v[:150] for k, v in ex.items()}]), rows_per_shard=100, log=lambda m: None)
    shard = os.path.join(d, "rows-00001.array_record")
    data = bytearray(open(shard, "rb").read())
    at = bytes(data).find(np.ascontiguousarray(ex["event_feats"][120]).tobytes())  # inside row 120's record
    assert at > 0
    data[at + 7] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    fresh = StreamedExamples(d)
    np.testing.assert_array_equal(fresh["items"][:100], ex["items"][:100])  # the other shard still reads
    with pytest.raises(DataError, match="rows-00001.array_record"):
        fresh["items"][100:150]
    open(shard, "wb").write(bytes(data[:at]))  # truncated
    with pytest.raises(DataError, match="rows-00001.array_record"):
        StreamedExamples(d)["items"][[120]]
    os.remove(os.path.join(d, "rows-00000.array_record"))
    with pytest.raises(DataError, match="rows-00000.array_record"):
        StreamedExamples(d)["items"][0]


def test_lazy_synthetic_ids():
    ids = SyntheticUserIds(10_000_000)
    assert len(ids) == 10_000_000 and ids[0] == "u00000000" and ids[-1] == "u09999999"
    assert ids[5:8] == ["u00000005", "u00000006", "u00000007"] and ids[np.array([3])] == ["u00000003"]
    with pytest.raises(IndexError):
        ids[10_000_000]


# --- memory ------------------------------------------------------------------------------------

_PEAK = """
import resource, sys
from u2qt import defaults
from u2qt.data.load import load_streamed
c = defaults.user_tokenizer().data
c.synthetic_users, c.synthetic_items, c.stream_chunk_users, c.max_events = int(sys.argv[1]), 100, 2000, 512
d = load_streamed(c, sys.argv[2], log=lambda m: None)
assert d.examples.rows == int(sys.argv[1])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, d.examples.nbytes)
"""


def test_building_in_chunks_keeps_peak_memory_bounded(tmp_path):
    """Peak RSS of building 12k and 36k users in chunks of 2k (rows of 12 KB: max_events=512):
    the extra 24k users' 296 MB of examples (and their tables) must not show up in the peak.
    (The allocator's high-water mark settles after about six chunks, so both runs pass that.)"""
    def peak(users):
        out = subprocess.run([sys.executable, "-c", _PEAK, str(users), str(tmp_path / str(users))], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, check=True)
        return [int(x) for x in out.stdout.split()]
    (small, small_bytes), (large, large_bytes) = peak(12_000), peak(36_000)
    extra = large_bytes - small_bytes
    assert extra > 290e6
    assert large - small < extra / 10, (small, large, extra)


# --- training ----------------------------------------------------------------------------------


@pytest.mark.heavy
def test_training_on_streamed_examples_matches_the_in_memory_streamed_path(tmp_path, compile_cache):
    """The same users (a tables directory) trained through grain from the TFDS files of the
    in-memory arrays and from the streamed files (one chunk: the same spec): same parameters."""
    from u2qt import config as config_lib
    from u2qt.train.loop import run
    tables, _ = make_synthetic(300, 60, seed=2)
    data_dir = tmp_path / "tables"
    data_dir.mkdir()
    for name in ("users", "items", "events"):
        getattr(tables, name).to_csv(data_dir / f"{name}.csv", index=False)

    def train(workdir, chunk):
        cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "default.py:runlocal"))
        for key, value in {"data.format": "tables", "data.path": str(data_dir), "data.device_mb": 0.0,
                           "data.stream_chunk_users": chunk, "train.steps": 12, "quantizer.kmeans_at_step": 4,
                           "train.eval_every": 12, "train.checkpoint_every": 12, "train.log_every": 6,
                           "train.warmup_steps": 2, "train.progress": False}.items():
            config_lib.apply_override(cfg, key, repr(value))
        summary = run(cfg, str(workdir))
        return summary, dict(np.load(workdir / "codebooks.npz")), np.load(workdir / "representations.npy")

    memory, books_m, reps_m = train(tmp_path / "memory", 0)
    streamed, books_s, reps_s = train(tmp_path / "streamed", 300)
    assert os.path.isdir(tmp_path / "streamed" / "cache" / "stream")
    assert not os.path.exists(tmp_path / "streamed" / "cache" / "tfds")  # the streamed files are read as they are
    for view in books_m:
        np.testing.assert_array_equal(books_s[view], books_m[view])
    np.testing.assert_array_equal(reps_s, reps_m)
    ids_m = pd.read_parquet(tmp_path / "memory" / "semantic_ids.parquet")
    ids_s = pd.read_parquet(tmp_path / "streamed" / "semantic_ids.parquet")
    pd.testing.assert_frame_equal(ids_s, ids_m)
    assert streamed["collision_rate"] == memory["collision_rate"]
