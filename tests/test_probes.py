"""Bad inputs and bad configs, tried the way a user meets them: through ``train.py``.

Every probe must end with exit status 2 and one ``error: ...`` line that says what is wrong and
where (each expected fragment is asserted), print no traceback, and leave the workdir untouched:
most probes rerun the command of a finished run (same config, its data or flags broken), and
every file in that workdir (checkpoints, config, metrics, tokens) must hold the same bytes after.
Probes of the MovieLens and LC-Rec readers use a new workdir, which must hold no checkpoint after.
"""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, built_once

_spec = importlib.util.spec_from_file_location("train_cli", os.path.join(REPO, "train.py"))
train_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_cli)

BASE = ["--config", os.path.join(REPO, "configs", "default.py:runlocal"), "--workdir", "run",
        "--config.data.format=tables", "--config.data.path=data", "--config.train.steps=12",
        "--config.quantizer.kmeans_at_step=4", "--config.train.log_every=6", "--config.train.eval_every=12",
        "--config.train.checkpoint_every=6", "--config.train.warmup_steps=2", "--config.train.progress=False"]


# ----------------------------------------------------------------------------- data
def _good_tables(root: str) -> None:
    rng = np.random.default_rng(0)
    data = os.path.join(root, "data")
    os.makedirs(data, exist_ok=True)
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(60)],
                          "country": rng.choice(["fr", "de", "it"], 60),
                          "age": rng.integers(18, 70, 60)})
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(30)],
                          "text": [f"item {i} {'red' if i % 2 else 'blue'} {'shoes' if i % 3 else 'hat'}" for i in range(30)]})
    ev = [(f"u{u}", f"i{int(rng.integers(30))}", 1_600_000_000 + u * 1000 + k * 60, int(rng.integers(1, 6)))
          for u in range(60) for k in range(12)]
    events = pd.DataFrame(ev, columns=["user_id", "item_id", "timestamp", "value"])
    users.to_csv(os.path.join(data, "users.csv"), index=False)
    items.to_csv(os.path.join(data, "items.csv"), index=False)
    events.to_csv(os.path.join(data, "events.csv"), index=False)


def _cli(argv) -> tuple[int, str]:
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = train_cli.main(list(argv))
    return rc, err.getvalue()


def _digest(path: str) -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = hashlib.sha1(open(full, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory, compile_cache):
    """A finished small run on the tables format, and its data (relative paths: a copy reruns it).
    Built once per session (``conftest.built_once``): tests copy it before changing anything."""
    def build(root):
        _good_tables(str(root))
        cwd = os.getcwd()
        os.chdir(root)
        try:
            rc, err = _cli(BASE)
        finally:
            os.chdir(cwd)
        assert rc == 0, err
    root = str(built_once(tmp_path_factory, "probe_base", build))
    assert os.path.exists(os.path.join(root, "run", "semantic_ids.parquet"))
    return root


def _line(path: str, n: int, new: str) -> None:
    lines = open(path).read().splitlines()
    lines[n - 1] = new
    open(path, "w").write("\n".join(lines) + "\n")


def _events_col(col: str, values: dict[int, object]):
    def mutate(root):
        path = os.path.join(root, "data", "events.csv")
        df = pd.read_csv(path, dtype=str)
        for row, v in values.items():
            df.loc[row, col] = v
        df.to_csv(path, index=False)
    return mutate


def _users_bytes(raw: bytes):
    return lambda root: open(os.path.join(root, "data", "users.csv"), "wb").write(raw)


def _parquet_in_csv(root):
    df = pd.read_csv(os.path.join(root, "data", "users.csv"))
    df.to_parquet(os.path.join(root, "data", "users.csv"))


def _latin1_users(root):
    path = os.path.join(root, "data", "users.csv")
    text = open(path).read().replace("u7,", "u7,é", 1)
    open(path, "wb").write(text.encode("latin-1"))


def _gzip_users(root):
    import gzip
    path = os.path.join(root, "data", "users.csv")
    raw = open(path, "rb").read()
    open(path, "wb").write(gzip.compress(raw))


def _zero_padded_items(root):
    """items 0..29 renamed to zero-padded numbers; events name them without the zeros."""
    for name in ("items", "events"):
        path = os.path.join(root, "data", f"{name}.csv")
        df = pd.read_csv(path, dtype=str)
        width = 3 if name == "items" else 0
        df["item_id"] = [s[1:].zfill(width) for s in df["item_id"]]
        df.to_csv(path, index=False)


def _all_text_empty(root):
    path = os.path.join(root, "data", "items.csv")
    df = pd.read_csv(path, dtype=str)
    df["text"] = ""
    df.to_csv(path, index=False)


def _unknown_users(root):
    path = os.path.join(root, "data", "events.csv")
    df = pd.read_csv(path, dtype=str)
    df.loc[: len(df) * 3 // 4, "user_id"] = "nobody"
    df.to_csv(path, index=False)


def _extreme_age(root):
    path = os.path.join(root, "data", "users.csv")
    df = pd.read_csv(path)
    df["age"] = df["age"].astype(float)
    df.loc[3, "age"] = 1e300
    df.to_csv(path, index=False)


def _one_more_event(root):
    with open(os.path.join(root, "data", "events.csv"), "a") as f:
        f.write("u1,i2,1600009999,3\n")


def _users_parquet_too(root):
    pd.read_csv(os.path.join(root, "data", "users.csv")).to_parquet(os.path.join(root, "data", "users.parquet"))


def _config_file(text):
    return lambda root: open(os.path.join(root, "bad.py"), "w").write(text)


def _damage_newest_checkpoint(root):
    newest = os.path.join(root, "run", "checkpoints", "12")
    for folder, _, names in os.walk(newest):
        for name in names:
            path = os.path.join(folder, name)
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.write(b"\x00garbage" * max(1, size // 8))


def _rm(name):
    return lambda root: os.remove(os.path.join(root, "data", name))


def _live_lock(root):
    json.dump({"pid": os.getpid(), "host": __import__("socket").gethostname(), "since": "now"},
              open(os.path.join(root, "run", "run.lock"), "w"))


E = os.path.join  # noqa: E731 (readability of the table below)
USERS, ITEMS, EVENTS = "users.csv", "items.csv", "events.csv"

# id, how the data or workdir is broken (or None), extra flags, fragments the message must hold.
RERUN_PROBES = [
    # -- the config (checked before anything is read)
    ("unknown_key", None, ["--config.train.stepz=3"], ["unknown config key 'train.stepz'", "train.steps"]),
    ("ill_typed", None, ["--config.train.steps=many"], ["train.steps", "wants a number", "'many'"]),
    ("steps_zero", None, ["--config.train.steps=0"], ["train.steps=0 must be an integer >= 1"]),
    ("steps_negative", None, ["--config.train.steps=-5"], ["train.steps=-5 must be an integer >= 1"]),
    ("batch_zero", None, ["--config.train.batch_size=0"], ["train.batch_size=0 must be"]),
    ("keep_zero", None, ["--config.train.keep_checkpoints=0"], ["train.keep_checkpoints=0 must be"]),
    ("checkpoint_every_zero", None, ["--config.train.checkpoint_every=0"], ["train.checkpoint_every=0"]),
    ("log_every_zero", None, ["--config.train.log_every=0"], ["train.log_every=0"]),
    ("kmeans_after_end", None, ["--config.quantizer.kmeans_at_step=99"],
     ["quantizer.kmeans_at_step=99 must be < train.steps=12"]),
    ("dropout", None, ["--config.model.dropout=1.5"], ["model.dropout=1.5 must be in [0, 1)"]),
    ("one_code", None, ["--config.quantizer.shared_codes=1"], ["quantizer.shared_codes=1 must be an integer >= 2"]),
    ("no_levels", None, ["--config.quantizer.shared_levels=0"], ["quantizer.shared_levels=0"]),
    ("heads", None, ["--config.model.num_heads=3"], ["model.dim=32 must be a multiple of model.num_heads=3"]),
    ("unknown_source", None, ["--config.model.sources=('tabular','sql')"], ["model.sources", "'sql'", "'behaviour'"]),
    ("unknown_format", None, ["--config.data.format=sql"], ["data.format='sql' must be one of", "'tables'"]),
    ("max_events_zero", None, ["--config.data.max_events=0"], ["data.max_events=0"]),
    ("lr_zero", None, ["--config.train.lr=0.0"], ["train.lr=0.0 must be > 0"]),
    ("negative_holdout", None, ["--config.data.holdout=-1"], ["data.holdout=-1 must be >= 0"]),
    ("kernel", None, ["--config.quantizer.implementation=cuda"], ["quantizer.implementation='cuda'"]),
    ("halt_negative", None, ["--config.train.halt_after_step=-1"], ["train.halt_after_step=-1"]),
    ("unknown_variant", None, ["--config", E(REPO, "configs", "default.py:fast")], ["unknown variants", "fast"]),
    ("no_config_file", None, ["--config", "configs/nope.py"], ["config file not found", "nope.py"]),
    ("unknown_argument", None, ["--steps=3"], ["unknown argument '--steps=3'"]),
    ("section", None, ["--config.train=3"], ["config key 'train' is a section"]),
    ("empty_path", None, ["--config.data.path="], ["data.path is empty", "data.format='tables'"]),
    ("lr_inf", None, ["--config.train.lr=1e999"], ["train.lr=inf must be a finite number"]),
    ("config_syntax", _config_file("def get_config(arg):\n    return (\n"), ["--config", "bad.py"],
     ["bad.py", "invalid python"]),
    ("config_raises", _config_file("def get_config(arg):\n    return 1 / 0\n"), ["--config", "bad.py"],
     ["bad.py", "line 2", "ZeroDivisionError"]),
    ("config_not_configdict", _config_file("def get_config(arg):\n    return {}\n"), ["--config", "bad.py"],
     ["bad.py", "not an ml_collections.ConfigDict"]),
    # -- the workdir
    ("other_config", None, ["--config.train.lr=0.5"], ["holds a run with a different config", "train.lr: 0.002 -> 0.5"]),
    ("live_lock", _live_lock, [], ["is in use by the run of pid", str(os.getpid())]),
    ("workdir_is_file", lambda r: open(os.path.join(r, "afile"), "w").write("x"), ["--workdir", "afile"],
     ["--workdir afile is a file"]),
    ("damaged_checkpoint", _damage_newest_checkpoint, [], ["cannot restore the checkpoint of step 12",
                                                           "move that step's folder away"]),
    ("data_changed", _one_more_event, [], ["data in data changed since its checkpoints", "events.csv changed",
                                           "finetune_changed_data"]),
    # -- the tables reader: what and where
    ("timestamp_text", _events_col("timestamp", {5: "yesterday"}), [], [EVENTS, "line 7", "timestamp", "'yesterday'"]),
    ("timestamp_ms", _events_col("timestamp", {0: "1600000000000"}), [], [EVENTS, "line 2", "milliseconds"]),
    ("timestamp_huge", _events_col("timestamp", {3: "1e25"}), [], [EVENTS, "line 5", "1e+25", "unix seconds"]),
    ("timestamp_negative", _events_col("timestamp", {2: "-5e18"}), [], [EVENTS, "line 4", "outside"]),
    ("timestamp_inf", _events_col("timestamp", {1: "inf"}), [], [EVENTS, "line 3", "timestamp is inf"]),
    ("value_inf", _events_col("value", {9: "inf"}), [], [EVENTS, "line 11", "value is inf"]),
    ("user_number_inf", lambda r: _line(E(r, "data", USERS), 5, "u3,fr,inf"), [], [USERS, "line 5", "'age'", "inf"]),
    ("latin1", _latin1_users, [], [USERS, "line 9", "not utf-8 text", "data.encoding"]),
    ("parquet_bytes", _parquet_in_csv, [], [USERS, "Parquet bytes", "users.parquet"]),
    ("gzip_bytes", _gzip_users, [], [USERS, "gzip"]),
    ("empty_file", _users_bytes(b""), [], [USERS, "empty file"]),
    ("header_only", _users_bytes(b"user_id,country,age\n"), [], [USERS, "empty"]),
    ("missing_column", lambda r: _line(E(r, "data", ITEMS), 1, "item_id,title"), [],
     [ITEMS, "missing required column(s) ['text']"]),
    ("duplicate_user", lambda r: _line(E(r, "data", USERS), 3, "u0,fr,30"), [], [USERS, "duplicate user_id", "u0"]),
    ("empty_user_id", lambda r: _line(E(r, "data", USERS), 4, ",fr,30"), [], [USERS, "line 4", "empty user_id"]),
    ("extra_field", lambda r: _line(E(r, "data", EVENTS), 6, "u0,i1,1600000000,3,extra"), [],
     [EVENTS, "malformed CSV", "line 6"]),
    ("two_formats", _users_parquet_too, [], ["users.csv and users.parquet", "keep one"]),
    ("no_events_file", _rm(EVENTS), [], ["no events.csv or events.parquet"]),
    # -- suspicious but usable: warnings, fatal under data.strict
    ("zero_padded_ids", _zero_padded_items, ["--config.data.strict=True"], [EVENTS, "item_id matches one of data/items.csv only without leading zeros", "vs '0"]),
    ("all_text_empty", _all_text_empty, ["--config.data.strict=True"], [ITEMS, "every item text is empty"]),
    ("most_events_dropped", _unknown_users, ["--config.data.strict=True"], [EVENTS, "events were dropped"]),
    ("extreme_value", _extreme_age, ["--config.data.strict=True"], ["column 'age'", "clipped"]),
]


@pytest.mark.parametrize("name,mutate,flags,fragments", RERUN_PROBES, ids=[p[0] for p in RERUN_PROBES])
def test_a_rerun_with_bad_input_is_refused_clearly_and_leaves_the_workdir_untouched(
        name, mutate, flags, fragments, finished, tmp_path, monkeypatch):
    root = str(tmp_path / "copy")
    shutil.copytree(finished, root)
    if mutate is not None:
        mutate(root)
    before = _digest(os.path.join(root, "run"))
    monkeypatch.chdir(root)
    rc, err = _cli(BASE + flags)
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment.lower() in err.lower(), (fragment, err)
    after = _digest(os.path.join(root, "run"))
    assert after == before, sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def test_a_warning_is_reported_and_the_run_goes_on_without_strict(finished, tmp_path, monkeypatch):
    """The same suspicious data without data.strict: a new run trains, and the summary says why."""
    root = str(tmp_path / "copy")
    shutil.copytree(os.path.join(finished, "data"), os.path.join(root, "data"))
    _extreme_age(root)
    monkeypatch.chdir(root)
    rc, err = _cli(BASE + ["--workdir", "fresh"])
    assert rc == 0, err
    summary = json.load(open(os.path.join(root, "fresh", "summary.json")))
    assert any("'age'" in w and "clipped" in w for w in summary["data_warnings"]), summary.get("data_warnings")
    spec = json.load(open(os.path.join(root, "fresh", "dataset_spec.json")))
    assert all(np.isfinite(spec["num_std"])) and spec["num_std"][0] < 100  # the column was not erased


def test_finetune_changed_data_takes_the_checkpoint_on_when_asked(finished, tmp_path, monkeypatch):
    root = str(tmp_path / "copy")
    shutil.copytree(finished, root)
    _one_more_event(root)
    monkeypatch.chdir(root)
    rc, err = _cli(BASE + ["--config.train.finetune_changed_data=True", "--config.train.steps=12"])
    assert rc == 0, err
    saved = json.load(open(os.path.join(root, "run", "data_fingerprint.json")))
    assert saved["files"]["events.csv"]["bytes"] == os.path.getsize(os.path.join(root, "data", "events.csv"))


def test_storage_errors_are_one_message_and_keep_the_checkpoints(finished, tmp_path, monkeypatch):
    """A read-only workdir or a full disk (simulated: as root, permissions do not stop writes)."""
    from u2qt import files
    root = str(tmp_path / "copy")
    shutil.copytree(finished, root)
    before = _digest(os.path.join(root, "run"))
    monkeypatch.chdir(root)
    for code, words in ((errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left on device")):
        def refuse(path, *args, _code=code, _words=words, **kwargs):
            try:
                raise OSError(_code, _words, path)
            except OSError as e:  # as Orbax's writer threads hand it on: wrapped
                raise RuntimeError("save failed") from e
        monkeypatch.setattr(files, "atomic_write", refuse)
        rc, err = _cli(BASE)
        assert rc == 2 and err.startswith("error: cannot write") and words in err and "Traceback" not in err, err
        assert "resume point" in err
    assert _digest(os.path.join(root, "run")) == before


# ----------------------------------------------------------------------------- other readers
def _movielens(root: str) -> str:
    path = os.path.join(root, "ml")
    os.makedirs(path)
    open(os.path.join(path, "users.dat"), "w").write("".join(f"{u}::F::25::3::12345\n" for u in range(1, 21)))
    open(os.path.join(path, "movies.dat"), "w").write("".join(f"{m}::Film {m} (1999)::Drama\n" for m in range(1, 11)))
    open(os.path.join(path, "ratings.dat"), "w").write(
        "".join(f"{u}::{m}::4::{978300000 + u * 100 + m}\n" for u in range(1, 21) for m in range(1, 11)))
    return path


def _lcrec(root: str) -> str:
    path = os.path.join(root, "lc")
    os.makedirs(path)
    inter = {str(u): [str((u + k) % 12) for k in range(6)] for u in range(30)}
    items = {str(i): {"title": f"thing {i}", "brand": "b", "categories": "c", "description": "d"} for i in range(12)}
    json.dump(inter, open(os.path.join(path, "Toy.inter.json"), "w"))
    json.dump(items, open(os.path.join(path, "Toy.item.json"), "w"))
    return path


def _write(name, text):
    def mutate(path):
        mode = "wb" if isinstance(text, bytes) else "w"
        with open(os.path.join(path, name), mode) as f:
            f.write(text)
    return mutate


ML = os.path.join(REPO, "configs", "movielens.py:runlocal")
LC_ITEMS = os.path.join(REPO, "configs", "amazon.py:beauty,items,runlocal")
LC_ID = os.path.join(REPO, "configs", "amazon.py:beauty,id,runlocal")

READER_PROBES = [
    ("ml_tab", ML, _movielens, _write("ratings.dat", "1::1::4::978300000\n2\t::1::4::978300001\n"),
     ["ratings.dat", "line 2", "tab"]),
    ("ml_not_integer", ML, _movielens, _write("ratings.dat", "1::1::four::978300000\n"),
     ["ratings.dat", "line 1", "value must be an integer"]),
    ("ml_no_ratings", ML, _movielens, lambda p: os.remove(os.path.join(p, "ratings.dat")), ["no ratings.dat"]),
    ("ml_milliseconds", ML, _movielens, _write("ratings.dat", "1::1::4::978300000000\n"), ["milliseconds"]),
    ("ml_missing_movies", ML, _movielens, lambda p: os.remove(os.path.join(p, "movies.dat")), ["missing movies.dat"]),
    ("lc_bad_json", LC_ITEMS, _lcrec, _write("Toy.inter.json", '{"1": ["2", "3"],\n "2": ['),
     ["Toy.inter.json", "invalid JSON at line 2"]),
    ("lc_no_users", LC_ITEMS, _lcrec, _write("Toy.inter.json", "{}"), ["Toy.inter.json", "no user sequences"]),
    ("lc_no_items", LC_ITEMS, _lcrec, _write("Toy.item.json", "{}"), ["Toy.item.json", "no items"]),
    ("lc_empty_sequences", LC_ITEMS, _lcrec, _write("Toy.inter.json", '{"1": [], "2": []}'),
     ["Toy.inter.json", "every one of the 2 user sequences is empty"]),
    ("lc_item_not_object", LC_ITEMS, _lcrec, _write("Toy.item.json", '{"1": "a string"}'),
     ["Toy.item.json", "item '1' must be an object"]),
    ("lc_sequence_not_list", LC_ITEMS, _lcrec, _write("Toy.inter.json", '{"1": "2 3 4"}'),
     ["Toy.inter.json", "user '1'", "must be a list"]),
    ("lc_not_utf8", LC_ITEMS, _lcrec, _write("Toy.item.json", b'{"1": {"title": "caf\xe9"}}'),
     ["Toy.item.json", "not UTF-8"]),
    ("lc_no_item_file", LC_ITEMS, _lcrec, lambda p: os.remove(os.path.join(p, "Toy.item.json")),
     ["Toy.item.json", "missing"]),
    ("lc_two_sets", LC_ITEMS, _lcrec, _write("Other.inter.json", "{}"), ["cannot infer the data set name"]),
    ("lc_no_eval_cases", LC_ID, _lcrec, _write("Toy.inter.json", '{"1": ["1", "2"], "2": ["3"]}'),
     ["no user has the 3 or more interactions", "nothing could be evaluated"]),
    ("lc_path_missing", LC_ITEMS, _lcrec, lambda p: shutil.rmtree(p), ["does not exist"]),
]


@pytest.mark.parametrize("name,config,make,mutate,fragments", READER_PROBES, ids=[p[0] for p in READER_PROBES])
def test_each_reader_names_what_is_wrong_and_where(name, config, make, mutate, fragments, tmp_path, monkeypatch):
    data = make(str(tmp_path))
    mutate(data)
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(["--config", config, "--workdir", "run", f"--config.data.path={data}",
                    "--config.data.cache_dir=cache"])
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment.lower() in err.lower(), (fragment, err)
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_the_config_choices_match_the_modules_that_read_them():
    from u2qt import defaults
    from u2qt.data.load import FORMATS
    from u2qt.data.text import NORMS
    from u2qt.kernels.codebook_assign.api import IMPLEMENTATIONS
    from u2qt.models.user_tokenizer import SOURCES
    from u2qt.tasks.core import TASKS
    from u2qt.tasks.recommender import ITEM_REPRS
    assert defaults.DATA_FORMATS == FORMATS and defaults.TEXT_NORMS == NORMS and defaults.SOURCES == SOURCES
    assert defaults.ITEM_REPRS == ITEM_REPRS and set(defaults.TASKS) == set(TASKS)
    assert defaults.IMPLEMENTATIONS == ("auto",) + IMPLEMENTATIONS


# ----------------------------------------------------------------------------- any LC-Rec directory
def test_any_lcrec_directory_trains_for_epochs_and_resumes_under_the_same_command(tmp_path, monkeypatch,
                                                                                  compile_cache):
    import contextlib
    import io
    import math
    data = _lcrec(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    argv = ["--config", os.path.join(REPO, "configs", "amazon.py:lcrec,id,runlocal"), "--workdir", "run",
            f"--config.data.path={data}", "--config.data.cache_dir=cache", "--config.train.halt_after_step=4"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train_cli.main(argv) == 0
    # 30 users, each one training sequence; 100 epochs at batch 64 (runlocal) = 47 steps, and every
    # interval that would not fit 47 steps is shortened and named in the log.
    steps = math.ceil(100 * 30 / 64)
    line = next(l for l in out.getvalue().splitlines() if l.startswith("schedule:"))
    assert f"train.epochs=100 over 30 training rows at batch 64 → train.steps={steps}" in line, line
    assert "train.log_every=2" not in line and "train.checkpoint_every" not in line, line  # these fit
    saved = json.load(open(tmp_path / "run" / "config.json"))
    assert saved["train"]["epochs"] == 100 and saved["train"]["steps"] == 6  # saved as given, not resolved
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the same command resumes (the resume check compares the config as given)
        assert train_cli.main(argv[:-1]) == 0
    assert "resumed from the checkpoint of step 4" in out.getvalue()
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert summary["steps"] == steps and summary["epochs"] == 100
    assert os.path.getsize(tmp_path / "run" / "training.png") > 0  # a recommender's plot too


def test_an_lcrec_variant_without_a_path_names_the_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(["--config", os.path.join(REPO, "configs", "amazon.py:lcrec,items"), "--workdir", "run"])
    assert rc == 2 and "data.path is empty" in err and "--config.data.path" in err, err
