"""A user's attributes and events → the model's input arrays, with a fitted spec.

numpy and the standard library only: training (``u2qt.data.examples.build_examples``) fits the
spec (vocabularies, clipping bounds, means) on the whole users table and encodes every user through
the functions below; the serving loader (``u2qt.serving``) encodes the raw rows a client sends with
the spec the bundle carries (``dataset_spec.json``) through ``encode_rows``. So a user gets the same
arrays in both places (``tests/test_export.py`` checks it on held-out rows).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

EVENT_FEATURES = ("log1p_hours_since_prev", "log1p_days_before_last", "hour_sin", "hour_cos", "value")


class RowError(ValueError):
    """A row that cannot be encoded; the message names the row and the field."""


def _cell_text(v) -> str | None:
    """One categorical value as its vocabulary string: integral numbers print as ints, so 94110,
    94110.0 and "94110" are the same value; None/NaN = missing."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return None
        return str(int(v)) if math.isfinite(v) and float(v).is_integer() else str(float(v))
    return str(v)


def as_text(values: np.ndarray) -> np.ndarray:
    """Categorical values as an object array of str (None = missing); vectorized for numeric arrays."""
    values = np.asarray(values)
    out = np.full(len(values), None, dtype=object)
    if values.dtype.kind in "iuf":
        x = values.astype(np.float64)
        present = np.isfinite(x)
        whole = present & (np.floor(np.where(present, x, 0)) == x)
        out[whole] = x[whole].astype(np.int64).astype(str)
        out[present & ~whole] = x[present & ~whole].astype(str)
        return out
    out[:] = [_cell_text(v) for v in values]
    return out


def encode_categories(text: np.ndarray, vocab: Sequence[str]) -> tuple[np.ndarray, int]:
    """Ids (value ``vocab[i]`` → i + 1; missing and unseen → 0, the unknown bucket) and the number
    of present values that were not in the vocabulary."""
    index = {v: i + 1 for i, v in enumerate(vocab)}
    ids = np.fromiter((index.get(v, 0) if v is not None else 0 for v in text), np.int32, len(text))
    return ids, int(np.sum((ids == 0) & np.not_equal(text, None)))


def standardize(raw: np.ndarray, lo, hi, mean, std) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[n, F] float64 (NaN = missing) → (clipped-and-standardized float32 with 0 where missing,
    the present mask, which present values were clipped)."""
    raw = np.asarray(raw, np.float64).reshape(len(raw), len(mean))
    present = np.isfinite(raw)
    clipped = np.clip(raw, np.asarray(lo, np.float64), np.asarray(hi, np.float64))
    num = np.where(present, (clipped - np.asarray(mean, np.float64)) / np.asarray(std, np.float64), 0.0)
    return num.astype(np.float32), present, present & (clipped != raw)


def event_features(ts: np.ndarray, prev_ts: np.ndarray, last_ts: np.ndarray, value: np.ndarray,
                   value_mean: float, value_std: float) -> np.ndarray:
    """[n, 5] per-event features (``EVENT_FEATURES``): log hours since the user's previous event
    (``prev_ts`` = ``ts`` for a first event), log days before the user's last input event, hour of
    day on the circle, and the standardized value (0 when there is none)."""
    hours_since_prev = np.log1p(np.maximum(ts - prev_ts, 0) / 3600.0)
    days_before_last = np.log1p(np.maximum(last_ts - ts, 0) / 86400.0)
    angle = 2 * np.pi * (ts % 86400) / 86400.0
    value_z = np.where(np.isfinite(value), (value - value_mean) / value_std, 0.0)
    return np.stack([hours_since_prev, days_before_last, np.sin(angle), np.cos(angle), value_z], axis=1)


# ---------------------------------------------------------------------- raw rows (serving)

def _records(rows, what: str) -> list[Mapping]:
    """Rows as a list of mappings: a list of dicts, a dict of columns, or a DataFrame."""
    if rows is None:
        return []
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame, without importing pandas
        return rows.to_dict("records")
    if isinstance(rows, Mapping):
        columns = {k: list(v) for k, v in rows.items()}
        n = {len(v) for v in columns.values()}
        if len(n) > 1:
            raise RowError(f"{what}: columns of different lengths {({k: len(v) for k, v in columns.items()})}")
        return [{k: v[i] for k, v in columns.items()} for i in range(n.pop() if n else 0)]
    rows = list(rows)
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise RowError(f"{what} row {i}: expected a mapping of column → value, got {type(r).__name__}")
    return rows


def _number(v, where: str) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        raise RowError(f"{where}: {v!r} is not a number") from None


def encode_rows(spec: Mapping, users, events=None) -> tuple[dict[str, np.ndarray], dict]:
    """Raw users (the training ``users`` table's columns; optionally each with an ``events`` list)
    and events (the ``events`` table's columns: user_id, item_id, timestamp, optional value) →
    (the model's input arrays, a report of what did not fit the training vocabularies).

    ``spec`` is the run's ``dataset_spec.json`` as a dict. Every event a user sends is input (no
    hold-out); the newest ``max_events`` are kept, as in training. Unknown categories go to the
    unknown bucket (id 0) and unknown items are dropped; the report counts both per field.
    """
    users = _records(users, "users")
    events = _records(events, "events")
    cat_fields, num_fields = list(spec["cat_fields"]), list(spec["num_fields"])
    item_index = {v: i + 1 for i, v in enumerate(spec["item_ids"])}
    n, max_events = len(users), int(spec["max_events"])
    report = {"users": n, "unknown_categories": {}, "missing_fields": {}, "unknown_items": 0,
              "events": 0, "users_without_events": 0, "ignored_columns": []}

    known = set(cat_fields) | set(num_fields) | {"user_id", "events"}
    report["ignored_columns"] = sorted({k for r in users for k in r if k not in known})
    cat = np.zeros((n, len(cat_fields)), np.int32)
    for j, f in enumerate(cat_fields):
        column = np.empty(n, dtype=object)  # 1-D whatever the values (np.array could nest lists)
        column[:] = [r.get(f) for r in users]
        text = as_text(column)
        cat[:, j], unknown = encode_categories(text, spec["cat_vocab"][j])
        missing = int(sum(t is None for t in text))
        if unknown:
            report["unknown_categories"][f] = unknown
        if missing:
            report["missing_fields"][f] = missing
    raw = np.array([[_number(r.get(f), f"users row {i} ({r.get('user_id', '?')}), column {f!r}")
                     for f in num_fields] for i, r in enumerate(users)], np.float64).reshape(n, len(num_fields))
    num, present, _ = standardize(raw, spec["num_clip_lo"], spec["num_clip_hi"], spec["num_mean"], spec["num_std"])
    for j, f in enumerate(num_fields):
        if (~present[:, j]).sum():
            report["missing_fields"][f] = int((~present[:, j]).sum())

    # Events: those nested in each user row, then those of the events table (matched by user_id).
    per_user: list[list[tuple[Mapping, str]]] = [[(e, f"users row {i}, events[{k}]") for k, e in enumerate(r.get("events") or [])]
                                                  for i, r in enumerate(users)]
    if events:
        row_of = {}
        for i, r in enumerate(users):
            if "user_id" not in r:
                raise RowError(f"users row {i}: no user_id, which an events table needs to match its events")
            row_of[str(r["user_id"])] = i
        for k, e in enumerate(events):
            uid = e.get("user_id")
            if str(uid) not in row_of:
                raise RowError(f"events row {k}: user_id {uid!r} is not among the users given")
            per_user[row_of[str(uid)]].append((e, f"events row {k}"))

    items = np.zeros((n, max_events), np.int32)
    feats = np.zeros((n, max_events, len(EVENT_FEATURES)), np.float32)
    length = np.zeros(n, np.int32)
    for i, evs in enumerate(per_user):
        it, ts, val = [], [], []
        for e, where in evs:
            for key in ("item_id", "timestamp"):
                if e.get(key) is None:
                    raise RowError(f"{where}: no {key!r}")
            index = item_index.get(str(e["item_id"]))
            if index is None:
                report["unknown_items"] += 1
                continue
            t = _number(e["timestamp"], f"{where}, timestamp")
            if not math.isfinite(t):
                raise RowError(f"{where}: timestamp {e['timestamp']!r} is not a finite number of unix seconds")
            it.append(index)
            ts.append(int(t))
            val.append(_number(e.get("value"), f"{where}, value"))
        report["events"] += len(it)
        if not it:
            report["users_without_events"] += 1
            continue
        it, ts, val = np.asarray(it, np.int32), np.asarray(ts, np.int64), np.asarray(val, np.float64)
        order = np.lexsort((it, ts))  # by time, ties by item index, as in training
        it, ts, val = it[order], ts[order], val[order]
        prev = np.concatenate([ts[:1], ts[:-1]])
        f = event_features(ts, prev, np.full(len(ts), ts[-1]), val, spec["value_mean"], spec["value_std"])
        keep = slice(max(0, len(it) - max_events), len(it))
        k = len(it[keep])
        items[i, :k], feats[i, :k], length[i] = it[keep], f[keep], k
    arrays = {"cat": cat, "num": num, "num_mask": present.astype(np.float32), "items": items,
              "event_feats": feats, "length": length}
    return arrays, report
