"""MovieLens-1M from the original GroupLens files → `Tables`.

- `users.dat`: UserID::Gender::Age::Occupation::Zip-code. Gender, age (a bucket: 1, 18, 25, ...),
  occupation (a code 0–20) and zip are categorical strings; `zip3` is the zip's 3-digit prefix.
- `movies.dat` (Latin-1): MovieID::Title (Year)::Genre|Genre → items with
  `text` = "Title (Year). Genres: A, B", `title`, `genres` ("A|B") and numeric `year`.
- `ratings.dat`, or every `ratings*.dat` / `ratings*.dat.gz` in the directory:
  UserID::MovieID::Rating::Timestamp → events with `value` = rating.
Users without ratings (in the shared copy, users 3000–6040) are kept and counted in the report.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import os
import re

import numpy as np
import pandas as pd

from u2qt.data.tables import DataError, DataReport, Tables, validate_tables

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _read_dat(filename: str, names: list[str], ints: list[str]) -> pd.DataFrame:
    """Reads a `::`-separated file; every problem names the file and its line number."""
    opener = gzip.open if filename.endswith(".gz") else open
    with opener(filename, "rb") as f:
        text = f.read().decode("latin-1")  # movies.dat is Latin-1; the others are ASCII
    if "\t" in text:
        line = text[: text.index("\t")].count("\n") + 1
        raise DataError(f"{filename}: line {line}: unexpected tab character")
    expected = f"expected {len(names)} fields ({'::'.join(names)})"
    lines = text.split("\n", 50)  # pandas cannot catch a first line that is too long: check it here
    first = next((i for i, l in enumerate(lines) if l.strip()), None)
    if first is None:
        raise DataError(f"{filename}: no records")
    if lines[first].count("::") + 1 > len(names):
        raise DataError(f"{filename}: line {first + 1}: {expected}, got {lines[first].count('::') + 1}")
    try:  # one spare column catches lines with one field too many
        df = pd.read_csv(
            io.StringIO(text.replace("::", "\t")), sep="\t", header=None, names=[*names, "_extra"], dtype=str,
            quoting=csv.QUOTE_NONE, skip_blank_lines=False, keep_default_na=False, na_filter=False,
            index_col=False,
        )
    except pd.errors.ParserError as e:  # "Expected 5 fields in line 7, saw 6"
        raise DataError(f"{filename}: malformed line, {expected}: {str(e).strip()}") from e
    line = np.arange(1, len(df) + 1)
    blank = (df == "").all(axis=1).to_numpy()
    df, line = df[~blank].reset_index(drop=True), line[~blank]
    extra = (df.pop("_extra") != "").to_numpy()
    if extra.any():
        raise DataError(f"{filename}: line {line[int(np.flatnonzero(extra)[0])]}: {expected}, got more")
    for col in names:  # a short line leaves its last fields empty
        bad = (df[col] == "").to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{filename}: line {line[i]}: {expected}, field {col} is empty or missing")
    for col in ints:
        try:  # fast path; on failure find the first bad line
            df[col] = df[col].to_numpy(dtype=object).astype(np.int64)
            continue
        except ValueError:
            pass
        num = pd.to_numeric(df[col].str.strip(), errors="coerce")
        bad = num.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{filename}: line {line[i]}: {col} must be an integer, got {df[col].iloc[i]!r}")
        df[col] = num.to_numpy(np.int64)
    return df


def _ratings_files(path: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(path, "ratings*.dat")) + glob.glob(os.path.join(path, "ratings*.dat.gz")))
    if not files:
        raise DataError(f"{path}: no ratings.dat, ratings*.dat or ratings*.dat.gz")
    return files


def read_movielens(path: str) -> tuple[Tables, DataReport]:
    """Reads MovieLens-1M from directory `path` (the original GroupLens files)."""
    if not os.path.isdir(path):
        raise DataError(f"{path}: not a directory (expected users.dat, movies.dat, ratings*.dat[.gz])")
    for name in ("users.dat", "movies.dat"):
        if not os.path.exists(os.path.join(path, name)):
            raise DataError(f"{path}: missing {name}")

    u = _read_dat(os.path.join(path, "users.dat"), ["user_id", "gender", "age", "occupation", "zip"], ["user_id"])
    users = pd.DataFrame({
        "user_id": u["user_id"].astype(str),
        "gender": u["gender"],
        "age": u["age"],
        "occupation": u["occupation"],
        "zip": u["zip"],
        "zip3": u["zip"].str[:3],
    })

    m = _read_dat(os.path.join(path, "movies.dat"), ["item_id", "title", "genres"], ["item_id"])
    year = pd.to_numeric(m["title"].str.extract(_YEAR, expand=False), errors="coerce")
    items = pd.DataFrame({
        "item_id": m["item_id"].astype(str),
        "text": m["title"] + ". Genres: " + m["genres"].str.replace("|", ", ", regex=False),
        "title": m["title"],
        "genres": m["genres"],
        "year": year.astype(np.float64),
    })

    parts = [
        _read_dat(f, ["user_id", "item_id", "value", "timestamp"], ["user_id", "item_id", "value", "timestamp"])
        for f in _ratings_files(path)
    ]
    r = pd.concat(parts, ignore_index=True)
    events = pd.DataFrame({
        "user_id": r["user_id"].astype(str),
        "item_id": r["item_id"].astype(str),
        "timestamp": r["timestamp"].astype(np.int64),
        "value": r["value"].astype(np.float64),
    })
    tables, report = validate_tables(users, items, events, source=path)
    return tables, report
