"""u2qt.quant.semantic_ids: de-duplication, collision statistics, the collision-free last level, and
the semantic-ID table (write, read, alignment by id)."""
import json

import numpy as np
import pandas as pd
import pytest

from u2qt.data.tables import DataError
from u2qt.quant.semantic_ids import (SemanticIdError, SemanticIds, collision_free_last_level, collision_stats,
                                     dedup_tokens)


def test_dedup_makes_every_id_unique_in_row_order():
    codes = np.array([[1, 2, 3], [1, 2, 3], [0, 0, 0], [1, 2, 3], [0, 0, 1], [0, 0, 0]])
    token = dedup_tokens(codes)
    np.testing.assert_array_equal(token, [0, 1, 0, 2, 0, 1])
    full = np.concatenate([codes, token[:, None]], 1)
    assert len(np.unique(full, axis=0)) == len(codes)
    np.testing.assert_array_equal(dedup_tokens(codes), token)  # deterministic


def test_dedup_on_random_codes_is_unique_and_minimal():
    codes = np.random.default_rng(0).integers(0, 3, size=(500, 2))
    token = dedup_tokens(codes)
    assert len(np.unique(np.concatenate([codes, token[:, None]], 1), axis=0)) == 500
    _, counts = np.unique(codes, axis=0, return_counts=True)
    assert token.max() == counts.max() - 1
    assert dedup_tokens(np.zeros((0, 3), int)).shape == (0,)


def test_collision_stats_on_a_hand_made_table():
    codes = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [4, 5, 6], [4, 5, 6], [7, 8, 9], [7, 8, 0], [9, 9, 9]])
    s = collision_stats(codes)
    assert s["collision_rate"] == pytest.approx(3 / 8)  # 8 items, 5 distinct IDs
    assert s["rows_sharing_codes"] == pytest.approx(5 / 8)  # 3 + 2 items share their tuple
    assert s["largest_group"] == 3
    assert s["distinct_ids"] == 5
    assert s["unique_after_dedup"] == 1.0
    assert s["max_dedup_token"] == 2
    assert collision_stats(np.arange(12).reshape(4, 3))["collision_rate"] == 0.0


def test_collision_free_last_level_moves_only_colliding_prefixes_to_the_cheapest_free_codes():
    book = np.array([[0.0], [1.0], [2.0], [10.0]])  # last-level codebook, K = 4, D = 1
    codes = np.array([[0, 1],   # prefix 0: items 0, 1, 2 all nearest to code 1 -> collision
                      [0, 1],
                      [0, 1],
                      [5, 1],   # prefix 5: one item on code 1, no collision -> untouched
                      [7, 3],   # prefix 7: two items on different codes -> untouched
                      [7, 2]])
    last = np.array([[1.0], [1.4], [0.9], [1.0], [9.0], [2.6]])
    out = collision_free_last_level(codes, last, book)
    # prefix 0: the assignment with least total squared distance of {1.0, 1.4, 0.9} to {0, 1, 2, 10}:
    # 1.0 -> 1, 1.4 -> 2, 0.9 -> 0 (cost 0 + .36 + .81 = 1.17; any other is dearer)
    assert out[:, 1].tolist() == [1, 2, 0, 1, 3, 2]
    assert (out[:, 0] == codes[:, 0]).all()
    assert collision_stats(out)["collision_rate"] == 0.0 and collision_stats(codes)["collision_rate"] == pytest.approx(2 / 6)
    # A prefix with more items than codes: K of them get distinct codes, the rest keep theirs.
    crowded = np.zeros((6, 2), np.int64)
    out = collision_free_last_level(crowded, np.linspace(0, 3, 6)[:, None], book)
    assert len(set(out[:, 1].tolist())) == 4 and collision_stats(out)["unique_after_dedup"] == 1.0


def test_semantic_ids_round_trip(tmp_path):
    codes = np.array([[1, 2], [1, 2], [3, 4]])
    path = str(tmp_path / "semantic_ids.parquet")
    SemanticIds(["a", "b", "c"], {"item": codes}, {"item": 5}, "item").write(path)
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["id", "item_0", "item_1", "dedup"]
    assert frame["id"].tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(frame[["item_0", "item_1", "dedup"]].to_numpy(), [[1, 2, 0], [1, 2, 1], [3, 4, 0]])
    table = SemanticIds.read(path)
    assert table.ids == ["a", "b", "c"] and table.kind == "item"
    assert list(table.codes) == ["item"] and table.sizes == {"item": 5}
    np.testing.assert_array_equal(table.full_ids(), [[1, 2, 0], [1, 2, 1], [3, 4, 0]])
    np.testing.assert_array_equal(table.all_codes, codes)
    assert table.all_codes.shape == (3, 2)
    np.testing.assert_array_equal(table.dedup, [0, 1, 0])
    np.testing.assert_array_equal(table.codes["item"], codes)
    assert table.reverse_index() == {(1, 2): ["a", "b"], (3, 4): ["c"]}
    assert table.collision_stats() == collision_stats(codes)
    # Rows are found by id, in the order asked for.
    np.testing.assert_array_equal(table.aligned(["c", "a", "b"]).full_ids(), [[3, 4, 0], [1, 2, 0], [1, 2, 1]])
    # A data set with an item the table lacks is refused, and the message counts the missing ids.
    with pytest.raises(SemanticIdError, match="1 of 4 ids have no semantic ID") as err:
        table.aligned(["a", "b", "c", "d"])
    assert isinstance(err.value, DataError)


def test_a_row_keeps_its_dedup_token_when_the_table_is_reordered_or_read_back(tmp_path):
    """The full ID is fixed once written: b stays (1, 2, 1) whatever order a consumer asks for."""
    table = SemanticIds(["a", "b", "c"], {"item": [[1, 2], [1, 2], [3, 4]]}, {"item": 5})
    reordered = table.aligned(["c", "b", "a"])
    np.testing.assert_array_equal(reordered.full_ids(), [[3, 4, 0], [1, 2, 1], [1, 2, 0]])
    path = str(tmp_path / "reordered.parquet")
    reordered.write(path)
    np.testing.assert_array_equal(SemanticIds.read(path).aligned(["a", "b", "c"]).dedup, [0, 1, 0])
    # A file whose (codes, dedup) names two rows alike is refused.
    frame = pd.read_parquet(path)
    frame.loc[:, "dedup"] = 0
    frame.to_parquet(str(tmp_path / "broken.parquet"), index=False)
    with pytest.raises(SemanticIdError, match="does not name every row uniquely"):
        SemanticIds.read(str(tmp_path / "broken.parquet"))


def test_semantic_ids_read_letter_json(tmp_path):
    # Another project's index file: {item id: ["<a_..>", "<b_..>", ...]}, one view "item".
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"12": ["<a_1>", "<b_2>", "<c_3>", "<d_0>"], "7": ["<a_1>", "<b_2>", "<c_4>", "<d_0>"]}))
    table = SemanticIds.read(str(path))
    assert table.ids == ["12", "7"] and list(table.codes) == ["item"] and table.kind == "item"
    np.testing.assert_array_equal(table.codes["item"], [[1, 2, 3, 0], [1, 2, 4, 0]])
    np.testing.assert_array_equal(table.aligned(["7", "12"]).all_codes, [[1, 2, 4, 0], [1, 2, 3, 0]])
    path.write_text(json.dumps({"12": ["<a_1>", "<c_2>"]}))
    with pytest.raises(SemanticIdError, match="index.json"):
        SemanticIds.read(str(path))
