"""Per-user example arrays (shapes, padding, hold-out split, features) and the synthetic data set."""

import numpy as np
import pandas as pd
import pytest

from u2qt.data.examples import DatasetSpec, build_examples
from u2qt.data.synthetic import make_synthetic
from u2qt.data.tables import validate_tables

HOUR, DAY = 3600, 86400
T0 = 1_700_000_000 - 1_700_000_000 % DAY  # midnight UTC


def small_tables():
    """Users: a has 12 events, b has 4 (too few for a hold-out), c none; d has a tie in time."""
    users = pd.DataFrame({
        "user_id": ["a", "b", "c", "d"],
        "color": ["red", "blue", None, "red"],
        "height": [1.0, 3.0, np.nan, 2.0],
        "gender": ["F", "M", "F", "M"],
    })
    items = pd.DataFrame({"item_id": [f"x{i}" for i in range(15)], "text": [f"item {i}" for i in range(15)]})
    ev = []
    for k in range(12):  # a: item x{k} at hour k (listed in reverse order on purpose)
        ev.append(("a", f"x{k}", T0 + k * HOUR, float(k % 5 + 1)))
    ev = ev[::-1]
    for k in range(4):  # b: one per day, no value
        ev.append(("b", f"x{k + 3}", T0 + k * DAY, np.nan))
    for k in range(10):  # d: x9 and x2 share a time -> ordered by item index (x2 first)
        ev.append(("d", f"x{[9, 2][k % 2] if k < 2 else k}", T0 + (0 if k < 2 else k) * HOUR, 3.0))
    events = pd.DataFrame(ev, columns=["user_id", "item_id", "timestamp", "value"])
    return validate_tables(users, items, events)[0]


def test_shapes_and_dtypes():
    spec, ex = build_examples(small_tables(), max_events=8, holdout=2, min_input=3)
    expect = {
        "user_index": (np.int32, (4,)),
        "cat": (np.int32, (4, 2)),
        "num": (np.float32, (4, 1)),
        "num_mask": (np.float32, (4, 1)),
        "items": (np.int32, (4, 8)),
        "event_feats": (np.float32, (4, 8, 5)),
        "length": (np.int32, (4,)),
        "future": (np.int32, (4, 2)),
        "future_length": (np.int32, (4,)),
    }
    assert set(ex) == set(expect)
    for k, (dtype, shape) in expect.items():
        assert ex[k].dtype == dtype and ex[k].shape == shape, k
    assert spec.num_items == 15 and spec.item_ids[0] == "x0" and spec.item_texts[3] == "item 3"
    assert spec.cat_fields == ["color", "gender"] and spec.num_fields == ["height"]
    assert spec.cat_sizes == [3, 3]
    assert DatasetSpec.from_json(spec.to_json()) == spec


def test_holdout_truncation_and_padding():
    spec, ex = build_examples(small_tables(), max_events=8, holdout=2, min_input=3)
    idx = lambda k: k + 1  # noqa: E731  item x{k} has index k + 1
    # a: 12 events sorted by time; last 2 held out; inputs are events 2..9 (the last 8 of 10).
    assert ex["future"][0].tolist() == [idx(10), idx(11)] and ex["future_length"][0] == 2
    assert ex["items"][0].tolist() == [idx(k) for k in range(2, 10)] and ex["length"][0] == 8
    # b: 4 events < holdout + min_input -> no hold-out, left-aligned, zero padded.
    assert ex["items"][1].tolist() == [idx(k) for k in (3, 4, 5, 6)] + [0] * 4
    assert ex["length"][1] == 4 and ex["future_length"][1] == 0 and ex["future"][1].tolist() == [0, 0]
    # c: no events at all.
    assert ex["length"][2] == 0 and not ex["items"][2].any() and not ex["event_feats"][2].any()
    # d: tie at the same timestamp broken by item index: x2 before x9.
    assert ex["items"][3][:2].tolist() == [idx(2), idx(9)]
    assert ex["future"][3].tolist() == [idx(8), idx(9)]
    # Padding stays zero; held-out events are never inputs (a's items are all distinct).
    for u in range(4):
        assert not ex["items"][u, ex["length"][u]:].any()
        assert not ex["event_feats"][u, ex["length"][u]:].any()
    assert not set(ex["items"][0]) & set(ex["future"][0])


def test_event_features():
    spec, ex = build_examples(small_tables(), max_events=8, holdout=2, min_input=3)
    f = ex["event_feats"][0]  # user a: inputs are events at hours 2..9
    np.testing.assert_allclose(f[:, 0], np.log1p(np.ones(8)), rtol=1e-6)  # 1 hour since previous
    np.testing.assert_allclose(f[:, 1], np.log1p((9 - np.arange(2, 10)) / 24), rtol=1e-6)
    hours = np.arange(2, 10)
    np.testing.assert_allclose(f[:, 2], np.sin(2 * np.pi * hours / 24), atol=1e-6)
    np.testing.assert_allclose(f[:, 3], np.cos(2 * np.pi * hours / 24), atol=1e-6)
    values = np.array([k % 5 + 1 for k in range(2, 10)], float)
    np.testing.assert_allclose(f[:, 4], (values - spec.value_mean) / spec.value_std, rtol=1e-5)
    assert ex["event_feats"][1, 0, 0] == 0.0  # first event: nothing before it
    np.testing.assert_allclose(ex["event_feats"][1, 1:4, 0], np.log1p(24.0), rtol=1e-6)
    assert not ex["event_feats"][1, :, 4].any()  # user b has no values


def test_tabular_encoding():
    spec, ex = build_examples(small_tables(), max_events=8, holdout=2, min_input=3)
    assert spec.cat_vocab[0] == ["red", "blue"]  # by frequency
    assert spec.cat_vocab[1] == ["F", "M"]  # ties by value
    assert ex["cat"].tolist() == [[1, 1], [2, 2], [0, 1], [1, 2]]  # missing color -> 0
    np.testing.assert_allclose(spec.num_mean, [2.0])
    np.testing.assert_allclose(spec.num_std, [np.std([1, 3, 2])])
    assert ex["num_mask"][:, 0].tolist() == [1, 1, 0, 1] and ex["num"][2, 0] == 0
    np.testing.assert_allclose(ex["num"][[0, 1, 3], 0], (np.array([1, 3, 2]) - 2) / np.std([1, 3, 2]), rtol=1e-6)


def test_user_columns_and_exclusion():
    spec, ex = build_examples(small_tables(), exclude_user_columns=["gender"])
    assert spec.cat_fields == ["color"] and ex["cat"].shape == (4, 1)
    spec, ex = build_examples(small_tables(), user_columns=["gender"])
    assert spec.cat_fields == ["gender"] and spec.num_fields == [] and ex["num"].shape == (4, 0)
    spec, ex = build_examples(small_tables(), categorical_columns=["height"])
    assert spec.cat_fields == ["color", "height", "gender"] and spec.cat_vocab[1] == ["1", "2", "3"]
    assert ex["cat"][:, 1].tolist() == [1, 3, 0, 2]
    with pytest.raises(ValueError, match="'shoe'"):
        build_examples(small_tables(), user_columns=["shoe"])


# --- synthetic data ----------------------------------------------------------------------------


def test_synthetic_is_deterministic():
    a, ta = make_synthetic(500, 100, seed=3)
    b, tb = make_synthetic(500, 100, seed=3)
    c, _ = make_synthetic(500, 100, seed=4)
    np.testing.assert_array_equal(ta, tb)
    for x, y in ((a.users, b.users), (a.items, b.items), (a.events, b.events)):
        pd.testing.assert_frame_equal(x, y)
    assert not a.events["item_id"].equals(c.events["item_id"])


def test_synthetic_validates_and_has_edge_cases():
    tables, types = make_synthetic()
    assert types.shape == (2000,) and set(np.unique(types)) == set(range(8))
    _, report = validate_tables(tables.users, tables.items, tables.events)
    assert report.events_dropped == 0
    assert 0.015 < report.users_without_events / report.users < 0.05
    assert report.items_without_events >= 4
    ts = tables.events.groupby("user_id")["timestamp"].diff().dropna()
    assert (ts > 0).all()
    assert tables.events["timestamp"].min() > 1_600_000_000
    assert set(tables.events["value"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    spec, ex = build_examples(tables)
    assert spec.cat_fields == ["region", "device"] and spec.num_fields == ["age"]
    assert (ex["length"] > 0).mean() > 0.95


def test_synthetic_planted_structure():
    tables, types = make_synthetic(2000, 400, num_types=8, seed=0)
    ev = tables.events.merge(tables.items[["item_id", "topic"]], on="item_id")
    ev["type"] = types[ev["user_id"].str[1:].astype(int).to_numpy()]
    # Each type concentrates on a few topics: its top-2 topics hold most of its events.
    by_type = pd.crosstab(ev["type"], ev["topic"]).to_numpy()
    top2 = np.argsort(-by_type, axis=1)[:, :2]
    share = np.take_along_axis(by_type, top2, axis=1).sum(axis=1) / by_type.sum(axis=1)
    assert (share > 0.6).all()
    # Users of one type share those topics: a user's most frequent topic is one of its type's top-2.
    per_user = ev.groupby(["user_id", "topic"]).size().unstack(fill_value=0)
    heavy = per_user[per_user.sum(axis=1) >= 10]
    user_type = types[heavy.index.str[1:].astype(int)]
    mode = heavy.columns.to_numpy()[heavy.to_numpy().argmax(1)]
    assert np.mean([m in top2[t] for m, t in zip(mode, user_type)]) > 0.9
    # No single attribute reveals the type (best guess from a value is far from perfect)...
    for col in ("region", "device"):
        table = pd.crosstab(tables.users[col].fillna("?"), types).to_numpy()
        assert table.max(axis=1).sum() / table.sum() < 0.6
    # ...but attributes do depend on the type.
    region = pd.crosstab(tables.users["region"].fillna("?"), types).to_numpy()
    assert region.max(axis=1).sum() / region.sum() > 1.5 / 8
    # Item text: items of one topic share vocabulary, items of different topics barely do.
    words = [set(t.replace(".", "").split()) for t in tables.items["text"]]
    topic = tables.items["topic"].to_numpy()
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(words), size=(3000, 2))
    overlap = np.array([len(words[i] & words[j]) for i, j in pairs])
    same = topic[pairs[:, 0]] == topic[pairs[:, 1]]
    assert overlap[same].mean() > overlap[~same].mean() + 1.0


@pytest.mark.parametrize("extreme", [1e300, -1e300, 1e30])
def test_one_extreme_value_cannot_erase_a_numeric_column(extreme):
    """Clipped at the median ± 10 robust standard deviations, so the other users keep their spread;
    without it the column's std would be huge (or infinite) and every other user's value ≈ 0."""
    rng = np.random.default_rng(0)
    heights = rng.normal(170, 10, 200)
    heights[7] = extreme
    tables = small_tables()
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(200)], "height": heights})
    events = pd.DataFrame({"user_id": ["u0"], "item_id": ["x1"], "timestamp": [T0]})
    tables = validate_tables(users, tables.items, events)[0]
    spec, ex = build_examples(tables, max_events=4, holdout=0, min_input=1)
    others = np.delete(ex["num"][:, 0], 7)
    assert 0.8 < others.std() < 1.2 and np.all(np.isfinite(ex["num"]))
    assert spec.num_clipped == {"height": 1} and np.isfinite(spec.num_std[0])
    assert spec.num_clip_lo[0] < heights.min() + 1 or extreme < 0
    assert DatasetSpec.from_json(spec.to_json()) == spec and "Infinity" not in spec.to_json()


def test_ordinary_columns_are_not_clipped():
    spec, _ = build_examples(small_tables(), max_events=8, holdout=2, min_input=3)
    assert spec.num_clipped == {}
    assert spec.num_clip_lo == [1.0] and spec.num_clip_hi == [3.0]  # the observed range
