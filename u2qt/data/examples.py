"""Per-user training examples: fixed-shape numpy arrays, one row per user (see README.md).

`build_examples` is vectorized over users (one sort of all events, then scatters): a million users
with 50 events each take seconds, not a Python loop per user.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd

from u2qt.data.tables import DataError, Tables
from u2qt.prep.users import EVENT_FEATURES, as_text, encode_categories, event_features, standardize


@dataclasses.dataclass
class DatasetSpec:
    """What a model needs to know about a data set: vocabularies, sizes, normalization."""

    user_ids: list[str]
    item_ids: list[str]  # item index i + 1 <-> item_ids[i]; index 0 = pad
    item_texts: list[str]
    cat_fields: list[str]
    cat_vocab: list[list[str]]  # per field; value v has id cat_vocab[f].index(v) + 1; 0 = missing/unseen
    num_fields: list[str]
    num_mean: list[float]
    num_std: list[float]
    value_mean: float
    value_std: float
    max_events: int
    holdout: int
    min_input: int
    # Numeric values are clipped to [lo, hi] before standardization (``robust_bounds``).
    num_clip_lo: list[float] = dataclasses.field(default_factory=list)
    num_clip_hi: list[float] = dataclasses.field(default_factory=list)
    num_clipped: dict[str, int] = dataclasses.field(default_factory=dict)  # values clipped, per field

    @property
    def num_items(self) -> int:
        """Number of real items (ids 1..num_items); an embedding table needs num_items + 1 rows."""
        return len(self.item_ids)

    @property
    def cat_sizes(self) -> list[int]:
        """Id range per categorical field, including 0 (missing/unseen)."""
        return [len(v) + 1 for v in self.cat_vocab]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DatasetSpec":
        return cls(**json.loads(text))


def _split_columns(users: pd.DataFrame, user_columns, exclude, categorical) -> tuple[list[str], list[str]]:
    cols = [c for c in users.columns if c != "user_id"] if user_columns is None else list(user_columns)
    unknown = [c for c in [*cols, *exclude, *categorical] if c not in users.columns]
    if unknown:
        raise DataError(f"user columns {unknown} (config data.exclude_user_columns or user_columns) are not in the "
                        f"users table (columns: {list(users.columns)})")
    cols = [c for c in cols if c not in set(exclude)]
    num = [c for c in cols if c not in set(categorical) and pd.api.types.is_numeric_dtype(users[c])
           and not pd.api.types.is_bool_dtype(users[c])]
    cat = [c for c in cols if c not in num]
    return cat, num


def _as_text(values: pd.Series) -> np.ndarray:
    """Categorical values as an object array of str (None = missing), as ``prep.users.as_text``."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return as_text(values.to_numpy(np.float64, na_value=np.nan))
    return as_text(values.astype(object).where(values.notna(), None).to_numpy(dtype=object))


# A numeric value further than this many robust standard deviations (1.4826 · MAD) from the median
# is clipped there before standardization, so one extreme value cannot erase a column for everyone.
CLIP_ROBUST_SD = 10.0


def robust_bounds(x: np.ndarray) -> tuple[float, float]:
    """[median ± CLIP_ROBUST_SD · 1.4826 · MAD] of the finite values of ``x``, within their range
    (so the bounds are finite and a MAD of 0 clips nothing); (0, 0) when there are none."""
    x = x[np.isfinite(x)]
    if not len(x):
        return 0.0, 0.0
    lo, hi = float(x.min()), float(x.max())
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med)))
    if mad > 0 and np.isfinite(mad):
        reach = CLIP_ROBUST_SD * 1.4826 * mad
        lo, hi = max(lo, med - reach), min(hi, med + reach)
    return lo, hi


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and std; huge magnitudes are scaled by the largest |x| first so squares cannot overflow."""
    if not len(x):
        return 0.0, 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(x.mean()), float(x.std())
    if not (np.isfinite(mean) and np.isfinite(std)):
        scale = float(np.max(np.abs(x)))
        mean, std = float((x / scale).mean()) * scale, float((x / scale).std()) * scale
    return mean, (std if std > 0 and np.isfinite(std) else 1.0)


def _vocab(values: np.ndarray) -> list[str]:
    """Values by descending count, ties by value: deterministic, frequent values get small ids."""
    counts = pd.Series(values).dropna().value_counts()
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [k for k, _ in order]


def _event_order(u: np.ndarray, ts: np.ndarray, it: np.ndarray) -> np.ndarray:
    """Permutation sorting events by (user, timestamp, item index); about 2x faster than lexsort."""
    if len(ts) and u.max() < 2**31 and ts.max() - ts.min() < 2**32:
        key = (u.astype(np.int64) << 32) | (ts - ts.min())
        by_item = np.argsort(it, kind="stable")
        return by_item[np.argsort(key[by_item], kind="stable")]
    return np.lexsort((it, ts, u))


def build_examples(
    tables: Tables,
    *,
    max_events: int = 50,
    holdout: int = 5,
    min_input: int = 5,
    user_columns: list[str] | None = None,
    exclude_user_columns: tuple[str, ...] | list[str] = (),
    categorical_columns: tuple[str, ...] | list[str] = (),
) -> tuple[DatasetSpec, dict[str, np.ndarray]]:
    """One example per user of `tables.users` (in that order); keys, dtypes, shapes as in README.md.

    user_columns: the attribute columns to use (default: all but user_id); exclude_user_columns are
    removed from them (e.g. an attribute that a downstream task predicts). Numeric columns are numeric
    fields unless named in categorical_columns (e.g. a zip code read from CSV as a number).
    """
    cat_fields, num_fields = _split_columns(tables.users, user_columns, exclude_user_columns, categorical_columns)
    return _examples(tables, None, fit=dict(cat_fields=cat_fields, num_fields=num_fields, max_events=max_events,
                                            holdout=holdout, min_input=min_input))


def encode_examples(tables: Tables, spec: DatasetSpec, *, first_index: int = 0) -> dict[str, np.ndarray]:
    """The examples of `tables.users` with a spec fitted before (on other users: the first chunk of
    a streamed data set): the same arrays `build_examples` makes, with the spec's vocabularies,
    clipping bounds, means, item ids and hold-out rule; unseen categories get id 0, events of items
    the spec does not know are dropped. `user_index` counts from `first_index`."""
    missing = [c for c in [*spec.cat_fields, *spec.num_fields] if c not in tables.users.columns]
    if missing:
        raise DataError(f"user columns {missing} of the data set's spec are not in the users table "
                        f"(columns: {list(tables.users.columns)})")
    return _examples(tables, spec, first_index=first_index)[1]


def _examples(tables: Tables, spec: DatasetSpec | None, *, fit: dict | None = None,
              first_index: int = 0) -> tuple[DatasetSpec, dict[str, np.ndarray]]:
    """`build_examples` (spec None: fitted here, from `fit`'s settings) or `encode_examples`."""
    users, items, events = tables.users, tables.items, tables.events
    num_users = len(users)
    cat_fields = spec.cat_fields if spec else fit["cat_fields"]
    num_fields = spec.num_fields if spec else fit["num_fields"]
    max_events, holdout, min_input = ((spec.max_events, spec.holdout, spec.min_input) if spec
                                      else (fit["max_events"], fit["holdout"], fit["min_input"]))

    # Tabular fields.
    cat_text = [_as_text(users[c]) for c in cat_fields]
    cat_vocab = spec.cat_vocab if spec else [_vocab(t) for t in cat_text]
    cat = np.zeros((num_users, len(cat_fields)), np.int32)
    for j, (t, v) in enumerate(zip(cat_text, cat_vocab)):
        cat[:, j], _ = encode_categories(t, v)
    num_raw = users[num_fields].to_numpy(dtype=np.float64).reshape(num_users, len(num_fields))
    present = np.isfinite(num_raw)
    if spec:
        bounds = np.array([spec.num_clip_lo, spec.num_clip_hi], np.float64).T.reshape(-1, 2)
        num_mean, num_std = np.asarray(spec.num_mean, np.float64), np.asarray(spec.num_std, np.float64)
    else:
        bounds = np.array([robust_bounds(num_raw[:, j]) for j in range(len(num_fields))]).reshape(-1, 2)
        clipped = np.clip(num_raw, bounds[:, 0], bounds[:, 1])
        stats = np.array([_mean_std(clipped[present[:, j], j]) for j in range(len(num_fields))]).reshape(-1, 2)
        num_mean, num_std = stats[:, 0], stats[:, 1]
    num, present, was_clipped = standardize(num_raw, bounds[:, 0], bounds[:, 1], num_mean, num_std)
    num_clipped = {f: int(n) for f, n in zip(num_fields, was_clipped.sum(axis=0)) if n}

    # Events: map ids to rows, sort by (user, timestamp, item index).
    u = pd.Index(users["user_id"]).get_indexer(events["user_id"])
    item_index = pd.Index(spec.item_ids) if spec else pd.Index(items["item_id"])
    it = item_index.get_indexer(events["item_id"].astype(str) if spec else events["item_id"]) + 1
    keep = (u >= 0) & (it >= 1)
    u, it = u[keep], it[keep]
    ts = events["timestamp"].to_numpy(np.int64)[keep]
    val = (events["value"].to_numpy(np.float64)[keep] if "value" in events.columns
           else np.full(len(u), np.nan))
    order = _event_order(u, ts, it)
    u, it, ts, val = u[order], it[order], ts[order], val[order]

    count = np.bincount(u, minlength=num_users)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    pos = np.arange(len(u)) - start[u]  # position of each event within its user, oldest first
    held = np.where(count >= holdout + min_input, holdout, 0)
    n_input = count - held
    first_kept = np.maximum(0, n_input - max_events)
    is_input = pos < n_input[u]
    is_kept = is_input & (pos >= first_kept[u])
    is_future = ~is_input

    # Per-event features (over the full time-sorted sequence of each user).
    prev_ts = np.where(pos > 0, np.roll(ts, 1), ts)
    last_input = np.zeros(num_users, np.int64)  # time of each user's last input event
    has_input = n_input > 0
    last_input[has_input] = ts[(start + n_input - 1)[has_input]]
    if spec:
        value_mean, value_std = spec.value_mean, spec.value_std
    else:
        val_in = val[is_input & np.isfinite(val)]
        value_mean = float(val_in.mean()) if len(val_in) else 0.0
        value_std = float(val_in.std()) if len(val_in) else 1.0
        value_std = value_std if value_std > 0 else 1.0
    feats = event_features(ts, prev_ts, last_input[u], val, value_mean, value_std)

    items_arr = np.zeros((num_users, max_events), np.int32)
    feats_arr = np.zeros((num_users, max_events, len(EVENT_FEATURES)), np.float32)
    slot = pos - first_kept[u]
    items_arr[u[is_kept], slot[is_kept]] = it[is_kept]
    feats_arr[u[is_kept], slot[is_kept]] = feats[is_kept]
    future = np.zeros((num_users, holdout), np.int32)
    fslot = pos - n_input[u]
    future[u[is_future], fslot[is_future]] = it[is_future]

    if spec is None:
        spec = DatasetSpec(
            user_ids=users["user_id"].astype(str).tolist(),
            item_ids=items["item_id"].astype(str).tolist(),
            item_texts=items["text"].astype(str).tolist(),
            cat_fields=cat_fields,
            cat_vocab=cat_vocab,
            num_fields=num_fields,
            num_mean=num_mean.tolist(),
            num_std=num_std.tolist(),
            value_mean=value_mean,
            value_std=value_std,
            max_events=max_events,
            holdout=holdout,
            min_input=min_input,
            num_clip_lo=bounds[:, 0].tolist(),
            num_clip_hi=bounds[:, 1].tolist(),
            num_clipped=num_clipped,
        )
    examples = {
        "user_index": np.arange(first_index, first_index + num_users, dtype=np.int32),
        "cat": cat,
        "num": num,
        "num_mask": present.astype(np.float32),
        "items": items_arr,
        "event_feats": feats_arr,
        "length": np.minimum(n_input, max_events).astype(np.int32),
        "future": future,
        "future_length": held.astype(np.int32),
    }
    return spec, examples
