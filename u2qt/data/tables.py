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

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import numpy as np
import pandas as pd

from u2qt.errors import DataError  # raised by every reader (and re-exported for them)

REQUIRED_COLUMNS = {
    "users": ("user_id",),
    "items": ("item_id", "text"),
    "events": ("user_id", "item_id", "timestamp"),
}
SUFFIXES = (".parquet", ".csv")




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
    # Dropped events whose id matches a known one only without leading zeros, per column:
    # (count, an event's id, the known id) (``zero_padding_matches``); they make a warning.
    padded: dict = dataclasses.field(default_factory=dict)
    # Suspicious but usable data: each a sentence naming the file and what looks wrong. They are
    # logged and kept in the summary; data.strict=True makes them errors (``settle_warnings``).
    warnings: list[str] = dataclasses.field(default_factory=list)

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


def _undecodable(filename: str, encoding: str) -> str:
    """Where a file stops being ``encoding`` text: "line N: byte 0x.."."""
    with open(filename, "rb") as f:
        raw = f.read()
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        return f"line {line}: byte 0x{raw[e.start]:02x}"
    return "somewhere"


def _read_file(filename: str, name: str, encoding: str = "utf-8") -> pd.DataFrame:
    if filename.endswith(".parquet"):
        try:
            return pd.read_parquet(filename)
        except Exception as e:  # pyarrow raises several types; all mean the same to the user
            raise DataError(f"{filename}: cannot read as Parquet: {e}") from e
    with _csv_errors(filename, name, encoding):
        return pd.read_csv(filename, **_csv_options(filename, name, encoding))


def read_batches(filename: str, name: str, encoding: str = "utf-8", rows: int = 1 << 20) -> Iterator[pd.DataFrame]:
    """The table in ``filename`` as frames of up to ``rows`` rows, in file order, each indexed by
    its rows' positions in the file (so errors name the file's lines); never the whole file."""
    if filename.endswith(".parquet"):
        import pyarrow.parquet as pq
        try:
            at = 0
            for batch in pq.ParquetFile(filename).iter_batches(batch_size=rows):
                df = batch.to_pandas()
                df.index = pd.RangeIndex(at, at + len(df))
                at += len(df)
                yield df
        except Exception as e:
            raise DataError(f"{filename}: cannot read as Parquet: {e}") from e
        return
    with _csv_errors(filename, name, encoding):
        yield from pd.read_csv(filename, chunksize=rows, **_csv_options(filename, name, encoding))


def _csv_options(filename: str, name: str, encoding: str) -> dict:
    with open(filename, "rb") as f:
        magic = f.read(4)
    if magic == b"PAR1":
        raise DataError(f"{filename}: holds Parquet bytes, not CSV text; rename it to {name}.parquet")
    if magic[:2] == b"\x1f\x8b":
        raise DataError(f"{filename}: is gzip-compressed; give the decompressed {name}.csv (or {name}.parquet)")
    id_cols = [c for c in ("user_id", "item_id") if c in REQUIRED_COLUMNS[name]]
    # utf-8-sig reads UTF-8 and drops a byte-order mark (else it sticks to the first column's name).
    return dict(dtype={c: str for c in id_cols + ["text"]}, keep_default_na=True,
                encoding="utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding)


@contextlib.contextmanager
def _csv_errors(filename: str, name: str, encoding: str):
    """pandas' errors while reading a CSV file → a DataError naming the file (and line)."""
    try:
        yield
    except UnicodeDecodeError:
        raise DataError(f"{filename}: {_undecodable(filename, encoding)} is not {encoding} text; if the file "
                        f"has another encoding, set --config.data.encoding (e.g. latin-1)") from None
    except LookupError as e:
        raise DataError(f"config data.encoding={encoding!r} is not an encoding Python knows") from e
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{filename}: empty file (no header, no rows)") from e
    except pd.errors.ParserError as e:
        # pandas says e.g. "Error tokenizing data. C error: Expected 3 fields in line 7, saw 4".
        raise DataError(f"{filename}: malformed CSV: {str(e).strip()}") from e


def _where(source: str, name: str) -> str:
    return source if source.endswith((".csv", ".parquet")) else f"{source} [{name}]"


def _line(df: pd.DataFrame, source: str, row: int) -> str:
    """Human position of the ``row``-th row of ``df``: its CSV line (header = line 1; exact unless
    blank lines or quoted line breaks come before it) or its row number. A frame read in batches
    (``read_batches``) is indexed by its rows' positions in the file; any other by 0..n-1."""
    at = int(df.index[row]) if pd.api.types.is_integer_dtype(df.index) else row
    return f"line {at + 2}" if source.endswith(".csv") else f"row {at}"


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
        raise _first_bad(df, source, name, bad, f"{col} must be a number, got {raw[bad].iloc[0]!r}")
    return num.to_numpy(dtype=np.float64)


# Unix seconds: 1e10 s is the year 2286, so larger values are milliseconds (or finer) by mistake;
# below -1e10 (year 1653) they are not interaction times either.
TIMESTAMP_RANGE = (-1e10, 1e10)


def _first_bad(df: pd.DataFrame, source: str, name: str, bad: np.ndarray, what: str) -> DataError:
    row = int(np.flatnonzero(bad)[0])
    return DataError(f"{_where(source, name)}: {_line(df, source, row)}: {what} ({int(bad.sum())} bad rows)")


def _check_timestamps(ts: np.ndarray, df: pd.DataFrame, source: str, name: str) -> None:
    """Finite unix seconds in a plausible range; milliseconds are named as such."""
    lo, hi = TIMESTAMP_RANGE
    bad = ~np.isfinite(ts)
    if bad.any():
        raise _first_bad(df, source, name, bad, f"timestamp is {ts[bad][0]}, not a time")
    bad = (ts < lo) | (ts >= hi)
    if bad.any():
        first = ts[bad][0]
        hint = ("it looks like milliseconds (or finer); give unix seconds" if hi <= first < 1e19
                else "unix seconds are expected")
        raise _first_bad(df, source, name, bad, f"timestamp {first:.6g} is outside [{lo:.0e}, {hi:.0e}): {hint}")


def _attributes(df: pd.DataFrame, skip: tuple[str, ...], source: str = "<memory>",
                name: str = "") -> dict[str, pd.Series]:
    """Numeric columns → float64, others → string (missing stays NaN), so CSV and Parquet agree.
    Infinite numbers are refused (NaN and empty cells mean missing)."""
    out = {}
    for c in df.columns:
        if c in skip:
            continue
        s = df[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            x = s.to_numpy(np.float64)
            if np.isinf(x).any():
                raise _first_bad(df, source, name, np.isinf(x), f"column {c!r} holds {x[np.isinf(x)][0]}; use a "
                                 f"finite number, or leave the cell empty for missing")
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
    part: bool = False,
    items_checked: pd.DataFrame | None = None,
) -> tuple[Tables, DataReport]:
    """Checks and normalizes the three tables (see the module docstring); raises `DataError`.

    `source` names where the tables came from (one name, or one per table) for error messages.
    ``part``: ``users`` and ``events`` are a block of larger tables (``TableDirChunks``): the
    block may hold no events, and the warnings about the whole tables are left to the caller.
    ``items_checked``: ``items`` already checked and normalized (``_normalize_items``) by the
    caller, used as it is (each block of ``TableDirChunks`` would otherwise do it again).
    """
    src = source if isinstance(source, dict) else {k: source for k in ("users", "items", "events")}
    for name, df in (("users", users), ("items", items), ("events", events)):
        if not (part and name == "events") and not (items_checked is not None and name == "items"):
            _check_columns(df, src[name], name)

    user_ids = _ids(users, "user_id", src["users"], "users")
    _unique(user_ids, src["users"], "users", "user_id")
    users_out = pd.DataFrame({"user_id": user_ids.to_numpy(), **{
        k: v.to_numpy() for k, v in _attributes(users, ("user_id",), src["users"], "users").items()}})
    items_out = _normalize_items(items, src["items"]) if items_checked is None else items_checked
    ev = _normalize_events(events, src["events"])

    report = DataReport(source=source if isinstance(source, str) else ", ".join(sorted(set(src.values()))))
    report.events_read = len(ev)
    user_row = pd.Index(users_out["user_id"]).get_indexer(ev["user_id"])
    item_row = pd.Index(items_out["item_id"]).get_indexer(ev["item_id"])
    unknown_user, unknown_item = user_row < 0, item_row < 0
    report.events_unknown_user = int(unknown_user.sum())
    report.events_unknown_item = int(unknown_item.sum())
    for col, known, rows in (("user_id", users_out["user_id"], unknown_user), ("item_id", items_out["item_id"], unknown_item)):
        padded = zero_padding_matches(ev[col], rows, known)
        if padded:
            report.padded[col] = padded
    known = ~(unknown_user | unknown_item)
    ev, user_row, item_row = ev[known], user_row[known], item_row[known]
    dup = pd.DataFrame({"u": user_row, "i": item_row, "t": ev["timestamp"].to_numpy()}).duplicated().to_numpy()
    report.events_duplicate = int(dup.sum())
    ev, user_row, item_row = ev[~dup].reset_index(drop=True), user_row[~dup], item_row[~dup]

    report.users, report.items, report.events = len(users_out), len(items_out), len(ev)
    report.users_without_events = int((np.bincount(user_row, minlength=len(users_out)) == 0).sum())
    report.items_without_events = int((np.bincount(item_row, minlength=len(items_out)) == 0).sum())
    tables = Tables(users=users_out, items=items_out, events=ev)
    if not part:
        report.warnings += table_warnings(report, src, tables.items)
    return tables, report


def _normalize_items(items: pd.DataFrame, source: str) -> pd.DataFrame:
    item_ids = _ids(items, "item_id", source, "items")
    _unique(item_ids, source, "items", "item_id")
    text = _text(items["text"], missing="")
    return pd.DataFrame({"item_id": item_ids.to_numpy(), "text": text.to_numpy(), **{
        k: v.to_numpy() for k, v in _attributes(items, ("item_id", "text"), source, "items").items()}})


def _normalize_events(events: pd.DataFrame, source: str) -> pd.DataFrame:
    """The events' columns checked and in the normalized layout (all rows, none dropped yet)."""
    ev_user = _ids(events, "user_id", source, "events")
    ev_item = _ids(events, "item_id", source, "events")
    ts = _numeric(events, "timestamp", source, "events", required=True)
    _check_timestamps(ts, events, source, "events")
    value = (
        _numeric(events, "value", source, "events", required=False)
        if "value" in events.columns
        else np.full(len(events), np.nan)
    )
    if np.isinf(value).any():
        raise _first_bad(events, source, "events", np.isinf(value), f"value is {value[np.isinf(value)][0]}; use a "
                         f"finite number, or leave the cell empty for none")
    return pd.DataFrame({
        "user_id": ev_user.to_numpy(),
        "item_id": ev_item.to_numpy(),
        "timestamp": np.floor(ts).astype(np.int64),
        "value": value,
        **{k: v.to_numpy() for k, v in _attributes(events, ("user_id", "item_id", "timestamp", "value"),
                                                   source, "events").items()},
    })


def table_warnings(report: DataReport, src: dict[str, str], items: pd.DataFrame) -> list[str]:
    """The suspicious-but-usable findings about whole tables (their counts in ``report``)."""
    out = []
    ev_src = src["events"]
    for col, name in (("user_id", "users"), ("item_id", "items")):
        if col in report.padded:
            n, seen, known = report.padded[col]
            out.append(f"{_where(ev_src, 'events')}: {n:,} events were dropped whose {col} matches one of "
                       f"{_where(src[name], name)} only without leading zeros (e.g. {seen!r} vs {known!r}); write "
                       f"the ids the same way in both")
    if report.events_read and report.events_dropped > report.events_read / 2:
        out.append(f"{_where(ev_src, 'events')}: {report.events_dropped:,} of {report.events_read:,} "
                   f"events were dropped (unknown user or item ids, duplicates)")
    if len(items) and (items["text"].str.strip() == "").all():
        out.append(f"{_where(src['items'], 'items')}: every item text is empty; the text source sees nothing")
    return out


def zero_padding_matches(ids: pd.Series, unknown: np.ndarray, known: pd.Series) -> tuple | None:
    """(count, an event's id, the known id) of unknown ids that equal a known id once leading
    zeros are stripped from both (``7`` vs ``007``), or None."""
    if not unknown.any():
        return None
    strip = lambda s: s.astype(str).str.lstrip("0").replace("", "0")  # noqa: E731
    lookup = pd.Series(known.to_numpy(), index=strip(known).to_numpy())
    lookup = lookup[~lookup.index.duplicated()]
    missing = ids[unknown]
    stripped = strip(missing)
    hit = stripped.isin(lookup.index).to_numpy()
    if not hit.any():
        return None
    first = int(np.flatnonzero(hit)[0])
    return int(hit.sum()), missing.iloc[first], lookup[stripped.iloc[first]]


def settle_warnings(warnings, strict: bool, log=print) -> list[str]:
    """Suspicious-but-usable data: each warning is logged and returned (for the summary); with
    ``data.strict`` they are an error."""
    warnings = list(warnings)
    if warnings and strict:
        raise DataError("data.strict=True and the data look wrong: " + "; ".join(warnings))
    for w in warnings:
        log(f"warning: {w}")
    return warnings


class TableDirChunks:
    """The tables of directory ``path`` (as ``read_table_dir``) in blocks of ``chunk_users`` users
    (in the users file's order) with their events, without ever holding all events or users:

      1. the users file is read in batches of ``read_rows`` for its ids (kept: an index of every
         user id, checked for duplicates);
      2. the events file is read in batches; each batch's rows go to the block of their user
         (pickled frames under ``scratch``, one per batch and block); events of unknown users are
         checked and counted there;
      3. each block of users is read again with its events and validated (``validate_tables``,
         ``part=True``), and the counts add up to ``report`` (set once every block was given).

    The items table is read whole (it is the small one) and checked once. Errors name the file and line as the
    whole read does; ``report`` equals ``read_table_dir``'s (the same counts and warnings)."""

    def __init__(self, path: str, chunk_users: int, scratch: str, encoding: str = "utf-8",
                 read_rows: int = 1 << 20):
        if not os.path.isdir(path):
            raise DataError(f"{path}: not a directory (expected users, items, events tables in it)")
        self.path, self.chunk_users, self.scratch = path, chunk_users, scratch
        self.encoding, self.read_rows = encoding, read_rows
        self.files = {name: _table_file(path, name) for name in REQUIRED_COLUMNS}
        self.report: DataReport | None = None
        self.user_ids: list[str] = []

    def _batches(self, name: str) -> Iterator[pd.DataFrame]:
        return read_batches(self.files[name], name, self.encoding, self.read_rows)

    def __iter__(self) -> Iterator[Tables]:
        import shutil
        src = self.files
        users_index = self._user_index()
        items = _read_file(src["items"], "items", self.encoding)
        _check_columns(items, src["items"], "items")
        items_out = _normalize_items(items, src["items"])
        items_index = pd.Index(items_out["item_id"])
        chunks = -(-len(users_index) // self.chunk_users)
        shutil.rmtree(self.scratch, ignore_errors=True)
        os.makedirs(self.scratch)
        try:
            total = DataReport(source=self.path)
            template, pieces = self._scatter(users_index, items_index, chunks, total)
            with_events = np.zeros(len(items_index), bool)
            for c, users in enumerate(_blocks(self._batches("users"), self.chunk_users)):
                events = pd.concat([pd.read_pickle(f) for f in pieces[c]]) if pieces[c] else template
                tables, report = validate_tables(users, items, events, source=src, part=True, items_checked=items_out)
                for field in ("events_read", "events_unknown_user", "events_unknown_item", "events_duplicate",
                              "events", "users", "users_without_events"):
                    setattr(total, field, getattr(total, field) + getattr(report, field))
                _add_padded(total, report.padded)
                with_events[items_index.get_indexer(tables.events["item_id"])] = True
                yield tables
            total.items = len(items_index)
            total.items_without_events = int((~with_events).sum())
            total.warnings = table_warnings(total, src, items_out)
            self.report = total
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _user_index(self) -> pd.Index:
        ids = []
        src = self.files["users"]
        for i, users in enumerate(self._batches("users")):
            if i == 0:
                _check_columns(users, src, "users")
            ids.append(_ids(users, "user_id", src, "users"))
        if not ids:
            raise DataError(f"{_where(src, 'users')}: the users table is empty")
        ids = pd.concat(ids, ignore_index=True)
        _unique(ids, src, "users", "user_id")
        self.user_ids = ids.tolist()
        return pd.Index(ids.to_numpy())

    def _scatter(self, users_index: pd.Index, items_index: pd.Index, chunks: int,
                 total: DataReport) -> tuple[pd.DataFrame, list[list[str]]]:
        """Every events batch's rows to their users' blocks; the rows of unknown users are checked
        and counted as dropped (into ``total``). Returns an empty events frame (a block's events
        when it has none) and each block's files, in the events file's order."""
        src = self.files["events"]
        template, pieces = None, [[] for _ in range(chunks)]
        for b, events in enumerate(self._batches("events")):
            if b == 0:
                _check_columns(events, src, "events")
                template = events.iloc[:0]
            block = users_index.get_indexer(_ids(events, "user_id", src, "events")) // self.chunk_users  # -1: unknown
            self._count_unknown_users(events[block < 0], users_index, items_index, total)
            order = np.argsort(block, kind="stable")
            bounds = np.searchsorted(block[order], np.arange(-1, chunks + 1))
            for c in range(chunks):
                rows = order[bounds[c + 1]:bounds[c + 2]]
                if len(rows):
                    pieces[c].append(os.path.join(self.scratch, f"c{c:06d}-{b:06d}.pkl"))
                    events.iloc[rows].to_pickle(pieces[c][-1])
        if template is None:
            raise DataError(f"{_where(src, 'events')}: the events table is empty")
        return template, pieces

    def _count_unknown_users(self, events: pd.DataFrame, users_index: pd.Index, items_index: pd.Index,
                             total: DataReport) -> None:
        """Events whose user is in no block: checked like the others, counted as dropped."""
        if not len(events):
            return
        ev = _normalize_events(events, self.files["events"])
        unknown_item = items_index.get_indexer(ev["item_id"]) < 0
        total.events_read += len(ev)
        total.events_unknown_user += len(ev)
        total.events_unknown_item += int(unknown_item.sum())
        _add_padded(total, {k: v for k, v in (
            ("user_id", zero_padding_matches(ev["user_id"], np.ones(len(ev), bool), pd.Series(users_index))),
            ("item_id", zero_padding_matches(ev["item_id"], unknown_item, pd.Series(items_index)))) if v})


def _blocks(frames: Iterator[pd.DataFrame], rows: int) -> Iterator[pd.DataFrame]:
    """The rows of consecutive frames re-cut into frames of exactly ``rows`` (the last: the rest)."""
    held: list[pd.DataFrame] = []
    count = 0
    for df in frames:
        held.append(df)
        count += len(df)
        while count >= rows:
            whole = pd.concat(held) if len(held) > 1 else held[0]
            yield whole.iloc[:rows]
            held, count = [whole.iloc[rows:]], count - rows
    if count:
        yield pd.concat(held) if len(held) > 1 else held[0]


def _add_padded(total: DataReport, padded: dict) -> None:
    for col, (n, seen, known) in padded.items():
        total.padded[col] = (total.padded[col][0] + n,) + total.padded[col][1:] if col in total.padded else (n, seen, known)


def read_table_dir(path: str, encoding: str = "utf-8") -> tuple[Tables, DataReport]:
    """Reads `users`, `items`, `events` (`.csv` in ``encoding`` or `.parquet` each) from directory `path`."""
    if not os.path.isdir(path):
        raise DataError(f"{path}: not a directory (expected users, items, events tables in it)")
    files = {name: _table_file(path, name) for name in REQUIRED_COLUMNS}
    frames = {name: _read_file(f, name, encoding) for name, f in files.items()}
    tables, report = validate_tables(frames["users"], frames["items"], frames["events"], source=files)
    report.source = path
    return tables, report
