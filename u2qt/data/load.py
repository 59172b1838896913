"""The config's ``data`` section → the user tables and per-user examples of a user tokenizer.

The one place that knows which reader serves which ``data.format`` (the item tokenizers and
recommenders read the LC-Rec layout, ``u2qt.data.lcrec``).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from u2qt.data.examples import CLIP_ROBUST_SD, DatasetSpec, build_examples
from u2qt.data.tables import DataError, DataReport, Tables

FORMATS = ("synthetic", "tables", "movielens")


@dataclasses.dataclass
class LoadedData:
    tables: Tables
    report: DataReport | None
    spec: DatasetSpec
    examples: dict[str, np.ndarray]
    user_types: np.ndarray | None  # planted types (synthetic data only)
    warnings: list[str]  # suspicious but usable (see ``tables.settle_warnings``)


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


def load_data(data_cfg) -> LoadedData:
    tables, report, types = load_tables(data_cfg)
    spec, examples = build_examples(tables, max_events=data_cfg.max_events, holdout=data_cfg.holdout,
                                    min_input=data_cfg.min_input,
                                    exclude_user_columns=tuple(data_cfg.exclude_user_columns))
    if len(spec.user_ids) == 0:
        raise DataError("the data has no users: nothing to tokenize")
    if spec.num_items == 0:
        raise DataError("the data has no items: the behaviour and text sources need at least one")
    warnings = list(report.warnings) if report is not None else []
    where = f"{report.source} [users]" if report is not None else "users"
    warnings += [f"{where}: {n:,} values of column {field!r} lie beyond {CLIP_ROBUST_SD:g} robust standard deviations "
                 f"of its median and were clipped (e.g. a wrong unit or a sentinel like 1e30)"
                 for field, n in spec.num_clipped.items()]
    return LoadedData(tables, report, spec, examples, types, warnings)
