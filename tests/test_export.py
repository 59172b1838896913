"""Export to a serving bundle and load it with jax and numpy only."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, built_once
from u2qt import config as config_lib


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, compile_cache):
    """A short user-tokenizer run (synthetic users), exported; built once per session
    (``conftest.built_once``), read-only."""
    from u2qt.export import export_run
    from u2qt.train.loop import run

    def build(root):
        cfg = config(root)
        run(cfg, str(root / "run"))
        export_run(str(root / "run"), str(root / "bundle"), platforms=("cpu", "cuda"), log=lambda m: None)

    def config(root):
        cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "default.py:runlocal"))
        config_lib.apply_override(cfg, "train.progress", "False")
        config_lib.apply_override(cfg, "data.cache_dir", str(root / "cache"))
        return cfg
    root = built_once(tmp_path_factory, "export", build)
    return root, config(root), json.load(open(root / "bundle" / "manifest.json"))


@pytest.mark.heavy
def test_the_bundle_gives_the_in_process_tokens_for_held_out_rows(bundle):
    from u2qt import serving
    from u2qt.export import trained_params
    from u2qt.tasks.core import make_task
    root, cfg, manifest = bundle
    assert manifest["format_version"] == serving.FORMAT_VERSION and manifest["task"] == "user_tokenizer"
    assert manifest["functions"]["tokens"]["platforms"] == ["cpu", "cuda"]
    assert set(manifest["codebooks"]) >= {"shared"} and manifest["parameters"] > 0
    loaded = serving.load(str(root / "bundle"))
    task = make_task(config_lib.load_config_file(str(root / "run" / "config.json")), str(root / "cache"),
                     log=lambda m: None)
    params, _ = trained_params(str(root / "run"))
    spec = manifest["functions"]["tokens"]["inputs"]
    for rows in (slice(0, 1), slice(100, 164), slice(100, 400)):  # batch sizes 1, 64, 300
        inputs = [np.asarray(task.rows[k][rows]) for k in spec]
        got = loaded("tokens", *inputs)
        want = task.serving_functions()["tokens"].fn(params, {k: jnp.asarray(v) for k, v in task.constants.items()},
                                                     *inputs)
        for view in want:
            np.testing.assert_array_equal(np.asarray(got[view]), np.asarray(want[view]))
    # The bundle's own check: the stored example rows give the outputs export computed in process.
    assert loaded.self_check() == {"tokens": {"rows": 64, "int_agreement": 1.0, "max_abs_diff": 0.0, "equal": True}}
    # The exported tokens are the run's own table for those users.
    import pandas as pd
    table = pd.read_parquet(root / "bundle" / "semantic_ids.parquet")
    shared = np.asarray(loaded("tokens", *[np.asarray(task.rows[k][:50]) for k in spec])["shared"])
    np.testing.assert_array_equal(shared, table[[c for c in table.columns if c.startswith("shared_")]].to_numpy()[:50])


def _raw_rows(tables, examples, users):
    """Users as a client sends them: the users table's rows, each with its input events (what
    training fed the model: the user's events by time, without the held-out last ones)."""
    items = {v: i + 1 for i, v in enumerate(tables.items["item_id"].astype(str))}
    rows = []
    for u in users:
        row = tables.users.iloc[u].to_dict()
        ev = tables.events[tables.events["user_id"].astype(str) == str(row["user_id"])]
        ev = sorted(ev.to_dict("records"), key=lambda e: (e["timestamp"], items[str(e["item_id"])]))
        row["events"] = ev[:len(ev) - int(examples["future_length"][u])]
        rows.append(row)
    return rows


@pytest.mark.heavy
def test_raw_user_rows_get_the_training_encoding_and_the_run_s_tokens(bundle):
    import pandas as pd
    from u2qt import serving
    from u2qt.data.load import load_data
    root, cfg, manifest = bundle
    b = serving.load(str(root / "bundle"))
    data = load_data(config_lib.load_config_file(str(root / "run" / "config.json")).data)
    users = list(range(0, len(data.tables.users), 7))
    rows = _raw_rows(data.tables, data.examples, users)
    arrays, report = b.encode_users(rows)
    for k in ("cat", "num", "num_mask", "items", "event_feats", "length"):
        np.testing.assert_array_equal(arrays[k], data.examples[k][users], err_msg=k)
    assert report["users"] == len(users) and report["unknown_categories"] == {} and report["unknown_items"] == 0
    codes, _ = b.tokenize_users(rows)
    table = pd.read_parquet(root / "bundle" / "semantic_ids.parquet")
    for view in codes:
        cols = [c for c in table.columns if c.startswith(f"{view}_")]
        np.testing.assert_array_equal(codes[view], table[cols].to_numpy()[users])
    # The same users as two tables (a DataFrame and event rows) give the same codes.
    flat = [dict(e, user_id=r["user_id"]) for r in rows for e in r["events"]]
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "events"} for r in rows])
    again, _ = b.tokenize_users(frame, flat[::-1])
    for view in codes:
        np.testing.assert_array_equal(again[view], codes[view])
    # Unknown values go to the unknown bucket and are counted; unknown items are dropped and counted.
    field = data.spec.cat_fields[0]
    odd = [dict(rows[0], **{field: "never-seen"}, events=rows[0]["events"] + [{"item_id": "no-such-item",
                                                                               "timestamp": 1}]),
           {k: v for k, v in rows[1].items() if k != data.spec.num_fields[0]}]
    arrays, report = b.encode_users(odd)
    assert arrays["cat"][0, 0] == 0 and report["unknown_categories"] == {field: 1}
    assert report["unknown_items"] == 1 and report["missing_fields"] == {data.spec.num_fields[0]: 1}
    assert arrays["num_mask"][1, 0] == 0
    np.testing.assert_array_equal(arrays["items"][0], data.examples["items"][users[0]])
    with pytest.raises(serving.BundleError, match=r"users row 0, events\[0\]: no 'timestamp'"):
        b.encode_users([dict(rows[0], events=[{"item_id": rows[0]["events"][0]["item_id"]}])])
    with pytest.raises(serving.BundleError, match=f"users row 1 .*column '{data.spec.num_fields[0]}': 'tall' is not a number"):
        b.encode_users([rows[0], dict(rows[1], **{data.spec.num_fields[0]: "tall"})])
    with pytest.raises(serving.BundleError, match="events row 0: user_id 'nobody' is not among the users given"):
        b.encode_users(rows[:1], [{"user_id": "nobody", "item_id": "x", "timestamp": 1}])
    with pytest.raises(serving.BundleError, match="no text_codes function"):
        b.text_codes(["a user tokenizer has no text function"])


@pytest.mark.heavy
def test_the_loader_runs_where_flax_cannot_be_imported(bundle):
    root, _, manifest = bundle
    spec = manifest["functions"]["tokens"]["inputs"]
    # The loader the bundle carries, alone on the path (not the repository), with flax made unimportable.
    script = f"""
import sys
sys.modules["flax"] = None  # importing flax now fails
sys.path.insert(0, {str(root / 'bundle' / 'loader')!r})
import numpy as np
from u2qt import serving
b = serving.load({str(root / 'bundle')!r})
inputs = [np.zeros([2] + [d for d in s["shape"] if d != "batch"], s["dtype"]) for s in b.manifest["functions"]["tokens"]["inputs"].values()]
out = b("tokens", *inputs)
assert "flax" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
print(sorted(out), {{k: np.asarray(v).shape for k, v in out.items()}})
assert serving.__file__.startswith({str(root / 'bundle' / 'loader')!r}), serving.__file__
assert serving.main([{str(root / 'bundle')!r}]) == 0
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shared" in done.stdout and "self-check tokens: 64 example rows, integer outputs equal 100.00%" in done.stdout


@pytest.mark.heavy
def test_a_damaged_or_foreign_bundle_is_refused_with_the_reason(bundle, tmp_path):
    import shutil
    from u2qt import serving
    root, _, _ = bundle
    copy = tmp_path / "b"
    shutil.copytree(root / "bundle", copy)
    data = bytearray(open(copy / "params.npz", "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(copy / "params.npz", "wb").write(bytes(data))
    with pytest.raises(serving.BundleError, match="params.npz does not match its checksum"):
        serving.load(str(copy))
    shutil.copy(root / "bundle" / "params.npz", copy / "params.npz")
    serving.load(str(copy))  # restored: loads again
    manifest = json.load(open(copy / "manifest.json"))
    json.dump(dict(manifest, format_version=99), open(copy / "manifest.json", "w"))
    with pytest.raises(serving.BundleError, match="bundle format version 99"):
        serving.load(str(copy))
    json.dump(manifest, open(copy / "manifest.json", "w"))
    with pytest.raises(serving.BundleError, match="not for 'tpu'"):
        serving.load(str(copy), platform="tpu")
    os.remove(copy / "functions" / "tokens.jax")
    with pytest.raises(serving.BundleError, match="functions/tokens.jax is missing"):
        serving.load(str(copy))
    with pytest.raises(serving.BundleError, match="no manifest.json"):
        serving.load(str(tmp_path))
    b = serving.load(str(root / "bundle"))
    with pytest.raises(serving.BundleError, match="must have shape"):
        b("tokens", *[np.zeros((2, 999), np.int32) for _ in b.manifest["functions"]["tokens"]["inputs"]])


def test_exporting_a_run_without_a_checkpoint_says_so(tmp_path):
    from u2qt import config as config_lib
    os.makedirs(tmp_path / "run")
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "default.py:runlocal"))
    (tmp_path / "run" / "config.json").write_text(config_lib.to_json(cfg))
    done = subprocess.run([sys.executable, "-m", "u2qt.export", "--workdir", str(tmp_path / "run"), "--out",
                           str(tmp_path / "b")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 2 and "no checkpoint to export" in done.stderr and "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "b") and not [p for p in os.listdir(tmp_path) if p.startswith(".export-")]
