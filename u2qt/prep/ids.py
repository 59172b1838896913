"""Item and user ids → the indices a served model reads (numpy and the standard library only)."""
from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np


def user_buckets(user_ids: Sequence[str], buckets: int) -> np.ndarray:
    """TIGER's user token: a stable hash (CRC-32) of each user id into ``buckets`` buckets."""
    return np.asarray([zlib.crc32(str(u).encode()) % buckets for u in user_ids], np.int32)


def histories(id_lists: Sequence[Sequence], index: Mapping[str, int], length: int) -> tuple[np.ndarray, int]:
    """Each user's item ids, oldest first → [N, length] item indices, the newest ``length`` known
    ones right-aligned (left-padded with 0), as training's cases are; and the number of ids that
    are not in ``index`` (dropped)."""
    out = np.zeros((len(id_lists), length), np.int32)
    unknown = 0
    for row, ids in enumerate(id_lists):
        if isinstance(ids, str):
            raise ValueError(f"history {row}: a list of item ids, not one string {ids!r}")
        known = [index[str(i)] for i in ids if str(i) in index]
        unknown += len(ids) - len(known)
        known = known[-length:] if length else []
        out[row, length - len(known):] = known
    return out, unknown
