"""The three tables a platform gives us (users, items, events), their reader and their validation.

`read_table_dir` reads `users`, `items` and `events` from `.csv` or `.parquet` files in one directory.
Every reader in this package ends in `validate_tables`, which normalizes dtypes, drops events that
cannot be used (unknown user or item, exact duplicates) and counts everything in a `DataReport`.

Normalized layout (what every consumer may rely on):
- `users`: `user_id` (str) first, then the attribute columns. Numeric columns are float64
  (NaN = missing); every other column is a string column (missing = NaN) and is categorical.
- `items`: `item_id` (str), `text` (str, "" where missing), then any other columns.
- `events`: `user_id` (str), `item_id` (str), `timestamp` (int64, unix seconds),
  `value` (float64, NaN where the source has none), then any other columns.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = {
    "users": ("user_id",),
    "items": ("item_id", "text"),
    "events": ("user_id", "item_id", "timestamp"),
}
SUFFIXES = (".parquet", ".csv")


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and what is wrong."""


@dataclasses.dataclass
class Tables:
    users: pd.DataFrame
    items: pd.DataFrame
    events: pd.DataFrame


@dataclasses.dataclass
class DataReport:
    source: str
    users: int = 0
    items: int = 0
    events: int = 0  # events kept
    events_read: int = 0
    users_without_events: int = 0
    items_without_events: int = 0
    events_unknown_user: int = 0  # dropped: user_id not in users
    events_unknown_item: int = 0  # dropped: item_id not in items (may overlap with the line above)
    events_duplicate: int = 0  # dropped: same (user_id, item_id, timestamp) as an earlier event

    @property
    def events_dropped(self) -> int:
        return self.events_read - self.events

    def __str__(self) -> str:
        lines = [
            f"data from {self.source}:",
            f"  users  {self.users:>10,}  ({self.users_without_events:,} without events)",
            f"  items  {self.items:>10,}  ({self.items_without_events:,} never in an event)",
            f"  events {self.events:>10,}  kept of {self.events_read:,} read",
        ]
        if self.events_dropped:
            lines.append(
                f"  dropped {self.events_dropped:,} events: {self.events_unknown_user:,} with an "
                f"unknown user_id, {self.events_unknown_item:,} with an unknown item_id, "
                f"{self.events_duplicate:,} duplicates of (user_id, item_id, timestamp)"
            )
        return "\n".join(lines)


def _table_file(path: str, name: str) -> str:
    found = [os.path.join(path, name + s) for s in SUFFIXES if os.path.exists(os.path.join(path, name + s))]
    if not found:
        raise DataError(f"{path}: no {name}.csv or {name}.parquet (a table directory needs users, items, events)")
    if len(found) > 1:
        raise DataError(f"{path}: both {name}.csv and {name}.parquet exist; keep one")
    return found[0]


def _read_file(filename: str, name: str) -> pd.DataFrame:
    id_cols = [c for c in ("user_id", "item_id") if c in REQUIRED_COLUMNS[name]]
    if filename.endswith(".parquet"):
        try:
            return pd.read_parquet(filename)
        except Exception as e:  # pyarrow raises several types; all mean the same to the user
            raise DataError(f"{filename}: cannot read as Parquet: {e}") from e
    try:
        return pd.read_csv(filename, dtype={c: str for c in id_cols + ["text"]}, keep_default_na=True)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{filename}: empty file (no header, no rows)") from e
    except pd.errors.ParserError as e:
        # pandas says e.g. "Error tokenizing data. C error: Expected 3 fields in line 7, saw 4".
        raise DataError(f"{filename}: malformed CSV: {str(e).strip()}") from e


def _where(source: str, name: str) -> str:
    return source if source.endswith((".csv", ".parquet")) else f"{source} [{name}]"


def _line(df: pd.DataFrame, source: str, row: int) -> str:
    """Human position of a row: its CSV line (header = line 1; exact unless blank lines or quoted
    line breaks come before it) or its row number."""
    return f"line {row + 2}" if source.endswith(".csv") else f"row {row}"


def _ids(df: pd.DataFrame, col: str, source: str, name: str) -> pd.Series:
    s = df[col]
    missing = s.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(f"{_where(source, name)}: {_line(df, source, row)}: empty {col} ({int(missing.sum())} rows)")
    if pd.api.types.is_float_dtype(s):
        if not np.all(np.mod(s.to_numpy(), 1) == 0):
            raise DataError(f"{_where(source, name)}: column {col} holds non-integer numbers")
        s = s.astype(np.int64)
    return s.astype(str).str.strip().astype(object)


def _check_columns(df: pd.DataFrame, source: str, name: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in df.columns]
    if missing:
        raise DataError(
            f"{_where(source, name)}: missing required column(s) {missing}; found columns {list(df.columns)}"
        )
    if len(df) == 0:
        raise DataError(f"{_where(source, name)}: the {name} table is empty")


def _unique(ids: pd.Series, source: str, name: str, col: str) -> None:
    dup = ids[ids.duplicated()]
    if len(dup):
        some = list(dict.fromkeys(dup.tolist()))[:5]
        raise DataError(f"{_where(source, name)}: duplicate {col}: {len(dup)} repeated, e.g. {some}")


def _numeric(df: pd.DataFrame, col: str, source: str, name: str, *, required: bool) -> np.ndarray:
    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce")
    bad = (num.isna() & raw.notna()).to_numpy().copy()
    if required:
        bad |= raw.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{_where(source, name)}: {_line(df, source, row)}: {col} must be a number, got "
            f"{raw.iloc[row]!r} ({int(bad.sum())} bad rows)"
        )
    return num.to_numpy(dtype=np.float64)


def _attributes(df: pd.DataFrame, skip: tuple[str, ...]) -> dict[str, pd.Series]:
    """Numeric columns → float64, others → string (missing stays NaN), so CSV and Parquet agree."""
    out = {}
    for c in df.columns:
        if c in skip:
            continue
        s = df[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            out[c] = s.astype(np.float64)
        else:
            out[c] = _text(s, missing=None)
    return out


def _text(s: pd.Series, missing) -> pd.Series:
    """Values as str (vectorized); missing values become `missing`."""
    out = np.full(len(s), missing, dtype=object)
    present = s.notna().to_numpy()
    out[present] = s[present].astype(str).to_numpy(dtype=object)
    return pd.Series(out, index=s.index, dtype=object)


def validate_tables(
    users: pd.DataFrame,
    items: pd.DataFrame,
    events: pd.DataFrame,
    *,
    source: str | dict[str, str] = "<memory>",
) -> tuple[Tables, DataReport]:
    """Checks and normalizes the three tables (see the module docstring); raises `DataError`.

    `source` names where the tables came from (one name, or one per table) for error messages.
    """
    src = source if isinstance(source, dict) else {k: source for k in ("users", "items", "events")}
    for name, df in (("users", users), ("items", items), ("events", events)):
        _check_columns(df, src[name], name)

    user_ids = _ids(users, "user_id", src["users"], "users")
    _unique(user_ids, src["users"], "users", "user_id")
    item_ids = _ids(items, "item_id", src["items"], "items")
    _unique(item_ids, src["items"], "items", "item_id")

    users_out = pd.DataFrame({"user_id": user_ids.to_numpy(), **{
        k: v.to_numpy() for k, v in _attributes(users, ("user_id",)).items()}})
    text = _text(items["text"], missing="")
    items_out = pd.DataFrame({"item_id": item_ids.to_numpy(), "text": text.to_numpy(), **{
        k: v.to_numpy() for k, v in _attributes(items, ("item_id", "text")).items()}})

    ev_src = src["events"]
    ev_user = _ids(events, "user_id", ev_src, "events")
    ev_item = _ids(events, "item_id", ev_src, "events")
    ts = _numeric(events, "timestamp", ev_src, "events", required=True)
    value = (
        _numeric(events, "value", ev_src, "events", required=False)
        if "value" in events.columns
        else np.full(len(events), np.nan)
    )
    ev = pd.DataFrame({
        "user_id": ev_user.to_numpy(),
        "item_id": ev_item.to_numpy(),
        "timestamp": np.floor(ts).astype(np.int64),
        "value": value,
        **{k: v.to_numpy() for k, v in _attributes(events, ("user_id", "item_id", "timestamp", "value")).items()},
    })

    report = DataReport(source=source if isinstance(source, str) else ", ".join(sorted(set(src.values()))))
    report.events_read = len(ev)
    user_row = pd.Index(users_out["user_id"]).get_indexer(ev["user_id"])
    item_row = pd.Index(items_out["item_id"]).get_indexer(ev["item_id"])
    unknown_user, unknown_item = user_row < 0, item_row < 0
    report.events_unknown_user = int(unknown_user.sum())
    report.events_unknown_item = int(unknown_item.sum())
    known = ~(unknown_user | unknown_item)
    ev, user_row, item_row = ev[known], user_row[known], item_row[known]
    dup = pd.DataFrame({"u": user_row, "i": item_row, "t": ev["timestamp"].to_numpy()}).duplicated().to_numpy()
    report.events_duplicate = int(dup.sum())
    ev, user_row, item_row = ev[~dup].reset_index(drop=True), user_row[~dup], item_row[~dup]

    report.users, report.items, report.events = len(users_out), len(items_out), len(ev)
    report.users_without_events = int((np.bincount(user_row, minlength=len(users_out)) == 0).sum())
    report.items_without_events = int((np.bincount(item_row, minlength=len(items_out)) == 0).sum())
    return Tables(users=users_out, items=items_out, events=ev), report


def read_table_dir(path: str) -> tuple[Tables, DataReport]:
    """Reads `users`, `items`, `events` (`.csv` or `.parquet` each) from directory `path`."""
    if not os.path.isdir(path):
        raise DataError(f"{path}: not a directory (expected users, items, events tables in it)")
    files = {name: _table_file(path, name) for name in REQUIRED_COLUMNS}
    frames = {name: _read_file(f, name) for name, f in files.items()}
    tables, report = validate_tables(frames["users"], frames["items"], frames["events"], source=files)
    report.source = path
    return tables, report
