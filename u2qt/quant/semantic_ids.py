"""One semantic-ID table for users and items: schema, writer, reader, reverse index.

A semantic ID is the codes an entity gets from one or more codebook stacks ("views"): an item
from the item tokenizer's single stack, a U²QT user from the shared stack and one per source.
``SemanticIds`` holds them for a list of ids; every producer (the tokenizers, the recommender
with codes learned end to end) writes it and every consumer (the recommender's fixed codes, the
downstream evaluation, export, generative retrieval) reads it:

    id              str, the user or item id
    <view>_<l>      int32, the code of level l of stack <view> (views in table order; the first
                    is the primary view)
    dedup           int32, the row's rank among the rows whose codes agree in every view (0 for
                    the first, in the producer's row order): (codes, dedup) is unique for every
                    row, so the full ID names exactly one entity. Fixed once written: reading,
                    re-ordering or sub-setting the table keeps each row's token
File: ``semantic_ids.parquet``, with the kind ("user" / "item") and each view's (levels, codes)
in the Parquet metadata. ``read`` also takes other projects' index files in the LETTER / GRID
JSON layout, ``{"<item id>": ["<a_12>", "<b_7>", "<c_201>", "<d_0>"], ...}`` (one view "item"
whose levels are the tokens, in order).

Also here, because they decide which codes become the exported IDs:
``collision_free_last_level`` (LC-Rec's uniform semantic mapping) and ``dedup_tokens``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from u2qt import files
from u2qt.data.tables import DataError
from u2qt.quant import stats

FILENAME = "semantic_ids.parquet"
_METADATA_KEY = b"u2qt"
_LETTER_TOKEN = re.compile(r"^<([a-z])_(\d+)>$")


class SemanticIdError(DataError):
    """A semantic-ID table that cannot be used; the message names the file and the problem."""


def dedup_tokens(codes: np.ndarray) -> np.ndarray:
    """The de-dup token of each row [N]: its rank among the rows with the same code tuple, in row
    order (0 for the first, 1 for the second, …). (codes, token) is unique for every row."""
    codes = np.asarray(codes)
    if len(codes) == 0:
        return np.zeros(0, np.int32)
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")  # rows of each group together, in row order
    sorted_group = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    token = np.empty(len(codes), np.int32)
    token[order] = np.arange(len(order)) - first
    return token


def collision_free_last_level(codes: np.ndarray, last_residuals: np.ndarray, last_codebook: np.ndarray) -> np.ndarray:
    """codes [N, L] (each level's nearest code), last_residuals [N, D] (the last level's input),
    last_codebook [K, D] -> codes [N, L] where the rows of every prefix codes[:, :L-1] that holds a
    collision get distinct last codes: the assignment of that prefix's rows to the K codes with
    the least total squared distance (scipy's linear_sum_assignment). A prefix without collision
    keeps its nearest codes (they are the optimum); one with more than K rows keeps K of them
    assigned and the rest at their nearest code. Levels before the last never change."""
    from scipy.optimize import linear_sum_assignment
    codes = np.array(codes)
    if len(codes) < 2:
        return codes
    _, full, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    collides = counts[full.reshape(-1)] > 1
    _, prefix = np.unique(codes[:, :-1], axis=0, return_inverse=True)
    prefix = prefix.reshape(-1)
    for group in np.unique(prefix[collides]):
        members = np.flatnonzero(prefix == group)
        cost = np.sum((last_residuals[members][:, None, :] - last_codebook[None]) ** 2, -1)
        rows, cols = linear_sum_assignment(cost)
        codes[members[rows], -1] = cols
    return codes


def collision_stats(codes: np.ndarray) -> dict:
    """Collisions of a code table [N, L]: the collision rate ((N − distinct)/N, ``stats``), the
    share of rows whose tuple another row shares, the largest group, the number of distinct IDs,
    uniqueness with the de-dup token and its largest value."""
    codes = np.asarray(codes)
    _, counts = np.unique(codes, axis=0, return_counts=True)
    with_token = np.concatenate([codes, dedup_tokens(codes)[:, None]], 1)
    return {"collision_rate": stats.collision_rate(codes),
            "rows_sharing_codes": stats.rows_sharing_codes(codes),
            "largest_group": int(counts.max()) if len(counts) else 0,
            "distinct_ids": int(len(counts)),
            "unique_after_dedup": float(len(np.unique(with_token, axis=0)) / max(len(codes), 1)),
            "max_dedup_token": int(with_token[:, -1].max()) if len(codes) else 0}


@dataclasses.dataclass
class SemanticIds:
    """Semantic IDs of ``ids``: ``codes[view]`` is int [N, levels] (dict order = view order)."""
    ids: list[str]
    codes: dict[str, np.ndarray]
    sizes: dict[str, int]  # codes per level of each view (K)
    kind: str = "item"     # "user" or "item"
    dedup: np.ndarray | None = None  # [N]; None = ranks in this table's row order (``dedup_tokens``)

    def __post_init__(self):
        self.ids = [str(i) for i in self.ids]
        self.codes = {v: np.asarray(c, np.int32).reshape(len(self.ids), -1) for v, c in self.codes.items()}
        if not self.codes:
            raise SemanticIdError("a semantic-ID table needs at least one view")
        self.dedup = (dedup_tokens(self.all_codes) if self.dedup is None
                      else np.asarray(self.dedup, np.int32).reshape(len(self.ids)))
        for view, c in self.codes.items():
            if len(c) and (c.min() < 0 or c.max() >= self.sizes[view]):
                raise SemanticIdError(f"view {view!r}: codes must lie in [0, {self.sizes[view]}), "
                                      f"got {c.min()}..{c.max()}")

    @property
    def primary_view(self) -> str:
        return next(iter(self.codes))

    @property
    def all_codes(self) -> np.ndarray:
        """Codes of every view side by side, [N, Σ levels]."""
        return np.concatenate(list(self.codes.values()), axis=1)

    def full_ids(self) -> np.ndarray:
        """[N, Σ levels + 1]: every view's codes and the de-dup token, unique per row."""
        return np.concatenate([self.all_codes, self.dedup[:, None]], axis=1)

    def aligned(self, ids: list[str], where: str = "") -> "SemanticIds":
        """The same table with its rows in the order of ``ids`` (each must be present)."""
        row = {i: r for r, i in enumerate(self.ids)}
        missing = [i for i in ids if str(i) not in row]
        if missing:
            raise SemanticIdError(f"{where or 'semantic-ID table'}: {len(missing)} of {len(ids)} ids have no "
                                  f"semantic ID, e.g. {missing[:5]} (the table holds {len(self.ids)} rows)")
        take = np.array([row[str(i)] for i in ids], np.int64)
        return SemanticIds(list(map(str, ids)), {v: c[take] for v, c in self.codes.items()}, dict(self.sizes),
                           self.kind, self.dedup[take])

    def reverse_index(self) -> dict[tuple[int, ...], list[str]]:
        """Code tuple of every view (without the de-dup token) → the ids that have it, in row order."""
        index: dict[tuple[int, ...], list[str]] = {}
        for i, row in zip(self.ids, map(tuple, self.all_codes.tolist())):
            index.setdefault(row, []).append(i)
        return index

    def collision_stats(self) -> dict:
        """``collision_stats`` of the primary view's codes."""
        return collision_stats(self.codes[self.primary_view])

    # ------------------------------------------------------------------------ files
    def write(self, path: str) -> None:
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq
        columns = {"id": pd.Series(self.ids, dtype=str)}
        for view, c in self.codes.items():
            for level in range(c.shape[1]):
                columns[f"{view}_{level}"] = c[:, level]
        columns["dedup"] = self.dedup
        table = pa.Table.from_pandas(pd.DataFrame(columns), preserve_index=False)
        meta = {"kind": self.kind, "views": {v: [int(c.shape[1]), int(self.sizes[v])] for v, c in self.codes.items()}}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _METADATA_KEY: json.dumps(meta)})
        files.atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    @classmethod
    def read(cls, path: str) -> "SemanticIds":
        """A table written by ``write`` (Parquet), or an index file in the LETTER / GRID JSON layout."""
        if not os.path.isfile(path):
            raise SemanticIdError(f"{path}: no such semantic-ID table")
        if path.endswith(".json"):
            return cls._read_letter_json(path)
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types; all mean the same to the user
            raise SemanticIdError(f"{path}: cannot read as Parquet: {e}") from e
        frame = table.to_pandas()
        if "id" not in frame.columns:
            raise SemanticIdError(f"{path}: no 'id' column; found {list(frame.columns)}")
        meta = json.loads((table.schema.metadata or {}).get(_METADATA_KEY, b"{}"))
        views = {v: tuple(lk) for v, lk in meta.get("views", {}).items()}
        if not views:  # a table from elsewhere: views from the <view>_<level> column names
            for col in frame.columns:
                view, _, level = col.rpartition("_")
                if view and level.isdigit():
                    views[view] = (max(views.get(view, (0, 0))[0], int(level) + 1), 0)
        if not views:
            raise SemanticIdError(f"{path}: no code columns named <view>_<level>; found {list(frame.columns)}")
        codes = {}
        for view, (levels, _) in views.items():
            cols = [f"{view}_{level}" for level in range(levels)]
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise SemanticIdError(f"{path}: view {view!r} lacks columns {missing}")
            codes[view] = frame[cols].to_numpy()
        sizes = {v: k or int(codes[v].max()) + 1 for v, (_, k) in views.items()}
        dedup = frame["dedup"].to_numpy() if "dedup" in frame.columns else None
        table = cls(frame["id"].astype(str).tolist(), codes, sizes, meta.get("kind", "item"), dedup)
        if len(np.unique(table.full_ids(), axis=0)) != len(table.ids):
            raise SemanticIdError(f"{path}: (codes, dedup) does not name every row uniquely")
        return table

    @classmethod
    def _read_letter_json(cls, path: str) -> "SemanticIds":
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SemanticIdError(f"{path}: not a JSON index file: {e}") from None
        if not isinstance(raw, dict) or not raw:
            raise SemanticIdError(f"{path}: expected a non-empty object {{item id: [\"<a_12>\", ...]}}")
        ids, rows, depth = [], [], None
        for item, tokens in raw.items():
            if not isinstance(tokens, list) or not tokens:
                raise SemanticIdError(f"{path}: item {item!r}: expected a list of tokens like \"<a_12>\", got {tokens!r}")
            parsed = [_LETTER_TOKEN.match(t) if isinstance(t, str) else None for t in tokens]
            bad = [t for t, m in zip(tokens, parsed) if m is None]
            if bad:
                raise SemanticIdError(f"{path}: item {item!r}: token {bad[0]!r} is not of the form <letter_number>")
            if [m.group(1) for m in parsed] != [chr(ord("a") + level) for level in range(len(parsed))]:
                raise SemanticIdError(f"{path}: item {item!r}: tokens must run <a_..>, <b_..>, … in order, "
                                      f"got {tokens}")
            if depth is None:
                depth = len(parsed)
            elif len(parsed) != depth:
                raise SemanticIdError(f"{path}: item {item!r} has {len(parsed)} tokens, the first item {depth}")
            ids.append(str(item))
            rows.append([int(m.group(2)) for m in parsed])
        codes = np.asarray(rows, np.int32)
        return cls(ids, {"item": codes}, {"item": int(codes.max()) + 1}, "item")
