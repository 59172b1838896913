"""The config's ``data`` section → the user tables and per-user examples of a user tokenizer.

The one place that knows which reader serves which ``data.format`` (the item tokenizers and
recommenders read the LC-Rec layout, ``u2qt.data.lcrec``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from u2qt.data.examples import CLIP_ROBUST_SD, DatasetSpec, build_examples, encode_examples
from u2qt.data.tables import DataError, DataReport, TableDirChunks, Tables

FORMATS = ("synthetic", "tables", "movielens")


@dataclasses.dataclass
class LoadedData:
    tables: Tables | None  # None when streamed (load_streamed)
    report: DataReport | None
    spec: DatasetSpec
    examples: dict[str, np.ndarray]
    user_types: np.ndarray | None  # planted types (synthetic data only)
    warnings: list[str]  # suspicious but usable (see ``tables.settle_warnings``)
    row_ids: Sequence[str] = ()  # the id of every example row (spec.user_ids in memory; lazy when streamed)
    users_with_events: int = 0


def load_tables(data_cfg) -> tuple[Tables, DataReport | None, np.ndarray | None]:
    if data_cfg.format not in FORMATS:
        raise DataError(f"config data.format={data_cfg.format!r} is unknown; known: {FORMATS}")
    if data_cfg.format == "synthetic":
        from u2qt.data.synthetic import make_synthetic
        tables, types = make_synthetic(data_cfg.synthetic_users, data_cfg.synthetic_items,
                                       data_cfg.synthetic_types, seed=0)
        return tables, None, types
    if not data_cfg.path:
        raise DataError(f"config data.path is empty: data.format={data_cfg.format!r} needs a data directory")
    if not os.path.isdir(data_cfg.path):
        raise DataError(f"config data.path={data_cfg.path!r} is not a directory")
    if data_cfg.format == "tables":
        from u2qt.data.tables import read_table_dir
        tables, report = read_table_dir(data_cfg.path, encoding=data_cfg.get("encoding", "utf-8"))
    else:
        from u2qt.data.movielens import read_movielens
        tables, report = read_movielens(data_cfg.path)
    return tables, report, None


def _build(data_cfg, tables: Tables):
    return build_examples(tables, max_events=data_cfg.max_events, holdout=data_cfg.holdout,
                          min_input=data_cfg.min_input, exclude_user_columns=tuple(data_cfg.exclude_user_columns))


def _checked_warnings(spec: DatasetSpec, num_users: int, report: DataReport | None) -> list[str]:
    if num_users == 0:
        raise DataError("the data has no users: nothing to tokenize")
    if spec.num_items == 0:
        raise DataError("the data has no items: the behaviour and text sources need at least one")
    warnings = list(report.warnings) if report is not None else []
    where = f"{report.source} [users]" if report is not None else "users"
    warnings += [f"{where}: {n:,} values of column {field!r} lie beyond {CLIP_ROBUST_SD:g} robust standard deviations "
                 f"of its median and were clipped (e.g. a wrong unit or a sentinel like 1e30)"
                 for field, n in spec.num_clipped.items()]
    return warnings


def load_data(data_cfg) -> LoadedData:
    tables, report, types = load_tables(data_cfg)
    spec, examples = _build(data_cfg, tables)
    warnings = _checked_warnings(spec, len(spec.user_ids), report)
    return LoadedData(tables, report, spec, examples, types, warnings, spec.user_ids,
                      int((examples["length"] > 0).sum()))


# ---------------------------------------------------------------------- streamed (data.stream_chunk_users > 0)
def _table_chunks(tables: Tables, chunk_users: int):
    """An in-memory ``Tables`` cut into chunks of users (with their events), in user order."""
    import pandas as pd
    users, events = tables.users, tables.events
    owner = pd.Index(users["user_id"]).get_indexer(events["user_id"])  # -1: unknown user (dropped later)
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(0, len(users) + chunk_users, chunk_users))
    for i, first in enumerate(range(0, len(users), chunk_users)):
        ev = events.iloc[order[bounds[i]:bounds[i + 1]]]
        yield Tables(users=users.iloc[first:first + chunk_users], items=tables.items, events=ev), None


def _stream_key(data_cfg) -> str:
    """The streamed examples' cache directory name: what they are built from."""
    from u2qt.data.stream import LAYOUT_VERSION
    what = {k: data_cfg.get(k) for k in ("format", "max_events", "holdout", "min_input", "stream_chunk_users",
                                          "encoding")}
    what["exclude_user_columns"] = list(data_cfg.exclude_user_columns)
    what["layout"] = LAYOUT_VERSION
    if data_cfg.format == "synthetic":
        what.update(users=data_cfg.synthetic_users, items=data_cfg.synthetic_items, types=data_cfg.synthetic_types)
    else:  # the files' names, sizes and times: an edited data directory is built again
        path = os.path.abspath(data_cfg.path)
        what["files"] = sorted((f, os.path.getsize(os.path.join(path, f)), os.path.getmtime(os.path.join(path, f)))
                               for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
        what["path"] = path
    return f"{data_cfg.format}-{hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]}"


def load_streamed(data_cfg, cache_dir: str, log=print) -> LoadedData:
    """The per-user examples written chunk by chunk (``data.stream_chunk_users`` users each) as
    array_record files under ``cache_dir/stream/`` (once; later runs read them) and opened lazily
    (``u2qt/data/stream.py``). The spec (vocabularies, clipping bounds, means) is fitted on the
    first chunk and every later chunk is encoded with it (``encode_examples``). Synthetic users are
    generated chunk by chunk (``synthetic_chunks``), so no step holds them all; a ``tables``
    directory is read block by block too (``TableDirChunks``: its events are first sorted into
    the blocks of their users on disk); a ``movielens`` one is read whole first."""
    from u2qt.data.stream import open_or_build, write_examples
    from u2qt.data.synthetic import SyntheticUserIds, synthetic_chunks
    chunk_users = int(data_cfg.stream_chunk_users)
    directory = os.path.join(cache_dir, "stream", _stream_key(data_cfg))
    synthetic = data_cfg.format == "synthetic"
    first: dict = {}

    def build():
        blocks = None  # a tables directory, read block by block (its report and ids come at the end)
        if synthetic:
            chunks, report = synthetic_chunks(data_cfg.synthetic_users, data_cfg.synthetic_items,
                                              data_cfg.synthetic_types, seed=0, chunk_users=chunk_users), None
        elif data_cfg.format == "tables":
            blocks = TableDirChunks(data_cfg.path, chunk_users, scratch=directory + ".scatter",
                                    encoding=data_cfg.get("encoding", "utf-8"))
            chunks, report = ((t, None) for t in blocks), None
        else:
            tables, report, _ = load_tables(data_cfg)
            chunks = _table_chunks(tables, chunk_users)
            first["ids"] = tables.users["user_id"].astype(str).tolist()
        types: list[np.ndarray] = []
        stats = {"users_with_events": 0}

        def encoded():
            for i, (tables, planted) in enumerate(chunks):
                if i == 0:
                    spec, ex = _build(data_cfg, tables)
                    first.update(spec=spec, report=report)
                    log(f"data: the spec (vocabularies, bounds, means) is fitted on the first {len(tables.users):,} "
                        f"users; every later chunk of {chunk_users:,} users is encoded with it")
                else:
                    ex = encode_examples(tables, first["spec"], first_index=i * chunk_users)
                if planted is not None:
                    types.append(planted.astype(np.int32))
                stats["users_with_events"] += int((ex["length"] > 0).sum())
                yield ex

        def meta():
            spec = dataclasses.replace(first["spec"], user_ids=[])  # ids: the rows' own (row_ids)
            return {"spec": json.loads(spec.to_json()), **stats,
                    "warnings": _checked_warnings(spec, 1, blocks.report if blocks else first["report"]),
                    "user_ids": None if synthetic else blocks.user_ids if blocks else first["ids"]}

        return write_examples(directory, encoded(), extras=lambda: {"planted_type": np.concatenate(types)} if types
                              else {}, meta=meta, log=log)

    examples = open_or_build(directory, build, log=log)
    m = examples.meta
    spec = DatasetSpec(**m["spec"])
    row_ids = SyntheticUserIds(examples.rows) if m["user_ids"] is None else m["user_ids"]
    types = examples.extra("planted_type") if "planted_type" in examples.extras else None
    return LoadedData(None, None, spec, examples, types, list(m["warnings"]), row_ids,  # no tables: never all in memory
                      int(m["users_with_events"]))
