"""Reader for the LC-Rec layout used by the semantic-ID literature (TIGER, LC-Rec, LETTER).

A directory holds one pair of files:
  - `NAME.inter.json`: `{user_id: [item_id, ...]}`, each list in time order (no timestamps);
  - `NAME.item.json`:  `{item_id: {"title", "brand", "categories", "description", ...}}`,
    any subset of those fields, some of them empty.

Numbering. Users and items are ordered by their ids: numerically when every id is a decimal
integer (so Beauty's item "0" is item index 1), otherwise as strings. Item index `i + 1` is
`item_ids[i]`; index 0 is padding. The catalogue is the union of the ids in `item.json` and the
ids named in sequences. Items that sequences name but `item.json` lacks are, by default, kept
with empty text and counted in the report (`unknown_items="keep"`); `"drop"` removes them from
the sequences (counted), `"error"` refuses the data.

Item text. "Title: …; Brand: …; Categories: …; Description: …" in that fixed order, empty fields
skipped. Each field is HTML-unescaped (`AT&amp;T` → `AT&T`), stripped of tags and of repeated
whitespace. Categories may be a string, a list or nested lists; they are flattened and joined
with ", " without repeats. The description is cut to `max_description_chars` characters (at a
word boundary, then "...").

Malformed input raises `LCRecFormatError` naming the file and the problem: invalid JSON (with
the line and column of the JSON error), a repeated key, a top-level value that is not an object,
a sequence that is not a list (naming the user), an item id that is neither an integer nor a
string (naming the user and position), an item entry that is not an object or a text field of
the wrong type (naming the item and the field).
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from u2qt.data.tables import DataError, zero_padding_matches

TEXT_FIELDS = ("title", "brand", "categories", "description")
_LABELS = {"title": "Title", "brand": "Brand", "categories": "Categories",
           "description": "Description"}
_TAG = re.compile(r"<[a-zA-Z/!][^<>]*>")
_SPACE = re.compile(r"\s+")
_EXAMPLES = 5  # ids listed in the report per kind of problem


class LCRecFormatError(DataError):
    """The files are not in the LC-Rec layout; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class LCRecReport:
    """What was read, and what was odd about it (counts, plus a few example ids)."""
    n_users: int
    n_items: int                       # catalogue size I (item indices 1..I)
    n_interactions: int                # after dropping unknown items, if asked to
    n_items_in_item_json: int
    items_missing_from_item_json: int  # named by sequences, absent from item.json
    unknown_items_dropped: int         # interactions removed under unknown_items="drop"
    items_without_text: int            # no non-empty text field (missing items included)
    items_never_interacted: int
    users_with_empty_sequences: int
    repeated_interactions: int         # an item seen again later in the same user's sequence
    consecutive_repeats: int           # the same item twice in a row
    users_with_repeats: int
    examples: dict[str, tuple[str, ...]]
    # Suspicious but usable, one sentence each (``tables.settle_warnings``: logged, or fatal with data.strict).
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        lines = [f"{self.n_users} users, {self.n_items} items, {self.n_interactions} interactions"]
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.startswith("n_") or field.name in ("examples", "warnings") or not value:
                continue
            shown = self.examples.get(field.name, ())
            lines.append(f"{field.name}: {value}" + (f" (e.g. {', '.join(shown)})" if shown else ""))
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class LCRecData:
    """One LC-Rec data set. `sequences[u]` holds item indices (1..I) of `user_ids[u]`, oldest first."""
    name: str
    user_ids: list[str]
    item_ids: list[str]          # item index i + 1 <-> item_ids[i]; 0 is padding
    sequences: list[np.ndarray]  # int32, one per user, possibly empty
    item_texts: list[str]        # aligned with item_ids; "" when an item has no text
    report: LCRecReport

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def item_index(self) -> dict[str, int]:
        """Item id -> item index (1..I)."""
        return {item: i + 1 for i, item in enumerate(self.item_ids)}


def read_lcrec(path: str | Path, name: str | None = None, *, unknown_items: str = "keep",
               max_description_chars: int = 2000) -> LCRecData:
    """Reads `path/NAME.inter.json` and `path/NAME.item.json`.

    `name` may be left out when the directory holds exactly one `*.inter.json`.
    `unknown_items` says what happens to items named by sequences but absent from item.json:
    "keep" (catalogue items with empty text), "drop" (removed from sequences) or "error".
    """
    if unknown_items not in ("keep", "drop", "error"):
        raise ValueError(f"unknown_items must be 'keep', 'drop' or 'error', got {unknown_items!r}")
    inter_path, item_path = _find_pair(Path(path), name)
    raw_sequences = _sequences(_load_object(inter_path), inter_path)
    raw_items = _load_object(item_path)
    if not raw_sequences:
        raise LCRecFormatError(f"{inter_path}: holds no user sequences (an empty object)")
    if not any(raw_sequences.values()):
        raise LCRecFormatError(f"{inter_path}: every one of the {len(raw_sequences)} user sequences is empty")
    if not raw_items:
        raise LCRecFormatError(f"{item_path}: holds no items (an empty object)")

    described = set(raw_items)
    named = {item for seq in raw_sequences.values() for item in seq}
    missing = sorted(named - described, key=_id_order(named))
    if missing and unknown_items == "error":
        raise LCRecFormatError(f"{inter_path}: {len(missing)} item ids are not in {item_path.name}, "
                               f"e.g. {', '.join(missing[:_EXAMPLES])}")
    catalogue = described | (set() if unknown_items == "drop" else named)
    item_ids = sorted(catalogue, key=_id_order(catalogue))
    user_ids = sorted(raw_sequences, key=_id_order(raw_sequences))
    index = {item: i + 1 for i, item in enumerate(item_ids)}

    sequences, dropped = [], 0
    repeated = consecutive = 0
    repeat_users = []
    for user in user_ids:
        kept = [index[item] for item in raw_sequences[user] if item in index]
        dropped += len(raw_sequences[user]) - len(kept)
        n_repeats = len(kept) - len(set(kept))
        if n_repeats:
            repeat_users.append(user)
        repeated += n_repeats
        consecutive += sum(a == b for a, b in zip(kept, kept[1:]))
        sequences.append(np.asarray(kept, dtype=np.int32))

    item_texts = [item_text(raw_items[item], item, item_path, max_description_chars)
                  if item in raw_items else "" for item in item_ids]
    seen = np.zeros(len(item_ids) + 1, dtype=bool)
    for seq in sequences:
        seen[seq] = True
    empty_users = [u for u, seq in zip(user_ids, sequences) if seq.size == 0]
    textless = [item for item, text in zip(item_ids, item_texts) if not text]
    never = [item for item, s in zip(item_ids, seen[1:]) if not s]
    warnings = []
    if len(textless) == len(item_ids):
        warnings.append(f"{item_path}: no item has text; the text embeddings are all the same")
    padded = zero_padding_matches(pd.Series(missing, dtype=object), np.ones(len(missing), bool),
                                  pd.Series(sorted(described), dtype=object))
    if padded:
        warnings.append(f"{inter_path}: {padded[0]} item ids match {item_path.name} ids only without leading zeros "
                        f"(e.g. {padded[1]!r} vs {padded[2]!r}); write them the same way")
    if missing and len(missing) > len(described):
        warnings.append(f"{inter_path}: {len(missing)} of the {len(named)} items the sequences name are not in "
                        f"{item_path.name}")
    report = LCRecReport(
        n_users=len(user_ids), n_items=len(item_ids),
        n_interactions=int(sum(seq.size for seq in sequences)),
        n_items_in_item_json=len(raw_items),
        items_missing_from_item_json=len(missing), unknown_items_dropped=dropped,
        items_without_text=len(textless), items_never_interacted=len(never),
        users_with_empty_sequences=len(empty_users), repeated_interactions=repeated,
        consecutive_repeats=consecutive, users_with_repeats=len(repeat_users),
        examples={
            "items_missing_from_item_json": tuple(missing[:_EXAMPLES]),
            "items_without_text": tuple(textless[:_EXAMPLES]),
            "items_never_interacted": tuple(never[:_EXAMPLES]),
            "users_with_empty_sequences": tuple(empty_users[:_EXAMPLES]),
            "users_with_repeats": tuple(repeat_users[:_EXAMPLES]),
        }, warnings=tuple(warnings))
    return LCRecData(name=inter_path.name[:-len(".inter.json")], user_ids=user_ids,
                     item_ids=item_ids, sequences=sequences, item_texts=item_texts, report=report)


def item_text(fields: Any, item: str, source: Path | str = "item.json",
              max_description_chars: int = 2000) -> str:
    """"Title: …; Brand: …; Categories: …; Description: …" from one item.json entry."""
    if not isinstance(fields, dict):
        raise LCRecFormatError(f"{source}: item {item!r} must be an object, "
                               f"got {type(fields).__name__}")
    parts = []
    for field in TEXT_FIELDS:
        value = fields.get(field)
        if field == "categories":
            text = ", ".join(_categories(value, item, source))
        elif value is None or isinstance(value, str):
            text = clean_text(value or "")
        else:
            raise LCRecFormatError(f"{source}: item {item!r} field {field!r} must be a string, "
                                   f"got {type(value).__name__}")
        if field == "description":
            text = _truncate(text, max_description_chars)
        if text:
            parts.append(f"{_LABELS[field]}: {text}")
    return "; ".join(parts)


def clean_text(text: str) -> str:
    """HTML entities decoded, tags removed, whitespace collapsed."""
    return _SPACE.sub(" ", _TAG.sub(" ", html.unescape(text))).strip()


def _categories(value: Any, item: str, source: Path | str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise LCRecFormatError(f"{source}: item {item!r} field 'categories' must be a string or "
                               f"a (nested) list of strings, got {type(value).__name__}")
    out: list[str] = []
    for entry in value:
        for name in _categories(entry, item, source) if isinstance(entry, list) else [entry]:
            if not isinstance(name, str):
                raise LCRecFormatError(f"{source}: item {item!r} field 'categories' holds a "
                                       f"{type(name).__name__}, expected strings")
            name = clean_text(name)
            if name and name not in out:
                out.append(name)
    return out


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip() + "..."


def _find_pair(path: Path, name: str | None) -> tuple[Path, Path]:
    if not path.is_dir():
        raise FileNotFoundError(f"LC-Rec data directory {path} does not exist")
    if name is None:
        names = sorted(p.name[:-len(".inter.json")] for p in path.glob("*.inter.json"))
        if len(names) != 1:
            found = ", ".join(names) if names else "none"
            raise LCRecFormatError(f"{path}: cannot infer the data set name: expected exactly one "
                                   f"NAME.inter.json, found {found}; pass name=")
        name = names[0]
    pair = (path / f"{name}.inter.json", path / f"{name}.item.json")
    for file in pair:
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing (the LC-Rec layout needs "
                                    f"{name}.inter.json and {name}.item.json)")
    return pair


def _load_object(file: Path) -> dict[str, Any]:
    def no_repeats(pairs):
        keys = set()
        for key, _ in pairs:
            if key in keys:
                raise LCRecFormatError(f"{file}: key {key!r} appears twice in one object")
            keys.add(key)
        return dict(pairs)

    try:
        with open(file, encoding="utf-8") as f:
            value = json.load(f, object_pairs_hook=no_repeats)
    except json.JSONDecodeError as e:
        raise LCRecFormatError(f"{file}: invalid JSON at line {e.lineno}, column {e.colno}: "
                               f"{e.msg}") from None
    except UnicodeDecodeError as e:
        raise LCRecFormatError(f"{file}: not UTF-8 text (byte {e.start})") from None
    if not isinstance(value, dict):
        raise LCRecFormatError(f"{file}: the top level must be a JSON object, "
                               f"got {type(value).__name__}")
    return value


def _sequences(raw: dict[str, Any], file: Path) -> dict[str, list[str]]:
    """User id -> item ids as strings (JSON integers and strings name the same item)."""
    out = {}
    for user, seq in raw.items():
        if not isinstance(seq, list):
            raise LCRecFormatError(f"{file}: the sequence of user {user!r} must be a list of "
                                   f"item ids, got {type(seq).__name__}")
        ids = []
        for position, item in enumerate(seq):
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise LCRecFormatError(f"{file}: user {user!r} position {position}: item id must "
                                       f"be an integer or a string, got {item!r}")
            ids.append(str(item))
        out[user] = ids
    return out


def _id_order(ids):
    """Sort key: numeric when every id is a decimal integer, else the string itself."""
    if all(i.isascii() and i.isdigit() for i in ids):
        return int
    return str
