"""Item ids → left-padded index histories, and TIGER's user hash (u2qt/prep/ids.py)."""
import zlib

import numpy as np
import pytest

from u2qt.prep.ids import histories, user_buckets


def test_histories_keep_the_newest_known_items_right_aligned_and_count_the_unknown():
    index = {"a": 1, "b": 2, "c": 3}
    out, unknown = histories([["a", "b"], ["x", "c", "a", "b", "c"], [], [1, "c"]], index, 3)
    np.testing.assert_array_equal(out, [[0, 1, 2], [1, 2, 3], [0, 0, 0], [0, 0, 3]])
    assert out.dtype == np.int32 and unknown == 2  # "x" and 1 (ids are compared as strings)
    with pytest.raises(ValueError, match="history 0: a list of item ids, not one string 'abc'"):
        histories(["abc"], index, 3)


def test_user_buckets_are_crc32_of_the_id():
    got = user_buckets(["u1", 7, "u1"], 2000)
    assert got.tolist() == [zlib.crc32(b"u1") % 2000, zlib.crc32(b"7") % 2000, zlib.crc32(b"u1") % 2000]
