"""DAS item tokenizer: de-duplication, collision statistics, training rows, and a short run on Office."""
import json
import os

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, shared_data

# Item-text embeddings (and TFDS files) are keyed by content: one persistent cache for every test
# run, so the sentence encoder runs once per machine, not once per test.
TEXT_CACHE = os.environ.get("U2QT_TEXT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "u2qt", "amazon")

from u2qt.model.item_tokenizer import (collision_free_last_level, collision_stats, dedup_tokens, read_item_codes,
                                       tokenizer_examples, write_item_table)


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
    assert s["collision_rate"] == pytest.approx(5 / 8)  # 3 + 2 items share their tuple
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
    assert collision_stats(out)["collision_rate"] == 0.0 and collision_stats(codes)["collision_rate"] == 0.5
    # A prefix with more items than codes: K of them get distinct codes, the rest keep theirs.
    crowded = np.zeros((6, 2), np.int64)
    out = collision_free_last_level(crowded, np.linspace(0, 3, 6)[:, None], book)
    assert len(set(out[:, 1].tolist())) == 4 and collision_stats(out)["unique_after_dedup"] == 1.0


def test_item_table_round_trip(tmp_path):
    codes = np.array([[1, 2], [1, 2], [3, 4]])
    path = str(tmp_path / "items.parquet")
    write_item_table(path, ["a", "b", "c"], codes)
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["item_id", "item_index", "item_0", "item_1", "dedup"]
    np.testing.assert_array_equal(read_item_codes(path, 3), [[0, 0, 0], [1, 2, 0], [1, 2, 1], [3, 4, 0]])
    assert read_item_codes(path, 3, with_dedup=False).shape == (4, 2)
    with pytest.raises(ValueError, match="covers 3 items"):
        read_item_codes(path, 4)


def test_training_rows_use_each_position_with_its_past_and_a_neighbour():
    ex = tokenizer_examples([np.array([5, 6, 7]), np.array([9])], max_history=2, seed=0)
    np.testing.assert_array_equal(ex["target"], [5, 6, 7, 9])
    np.testing.assert_array_equal(ex["history"], [[0, 0], [0, 5], [5, 6], [0, 0]])
    assert ex["cooc"][0] == 6 and ex["cooc"][1] in (5, 7) and ex["cooc"][2] == 6 and ex["cooc"][3] == 0


def test_short_run_on_office_writes_the_item_table(tmp_path, compile_cache):
    data = shared_data("amazon-office-2014")
    from u2qt import config as config_lib
    from u2qt.train.loop import run
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "amazon.py") + ":office,items,runlocal")
    cfg.unlock()
    cfg.data.path = data
    cfg.data.cache_dir = TEXT_CACHE
    summary = run(cfg, str(tmp_path / "run"))
    frame = pd.read_parquet(tmp_path / "run" / "item_codes.parquet")
    assert len(frame) == 2420 and frame["item_index"].tolist() == list(range(1, 2421))
    full = frame[["item_0", "item_1", "item_2", "dedup"]].to_numpy()
    assert len(np.unique(full, axis=0)) == len(frame)
    assert frame[["item_0", "item_1", "item_2"]].to_numpy().max() < cfg.quantizer.item_codes
    test = summary["test"]
    assert test["unique_after_dedup"] == 1.0 and 0.0 <= test["collision_rate"] <= 1.0
    # The collision-free last level (the config's default): never more collisions than nearest codes.
    assert test["collision_rate"] <= test["nearest_collision_rate"] and 0.0 <= test["moved_to_a_free_code"] <= 1.0
    assert summary["collision_rate"] == test["collision_rate"]  # the exported table is the reported one
    # The results-table script renders the run: both collision rates, in that order.
    import subprocess
    import sys
    table = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "amazon_table.py"), str(tmp_path / "run")],
                           capture_output=True, text=True, check=True).stdout
    row = next(line for line in table.splitlines() if line.startswith("| amazon-office-2014"))
    assert f"| {test['collision_rate']:.2%} | {test['nearest_collision_rate']:.2%} |" in row, row
    assert json.load(open(tmp_path / "run" / "summary.json"))["test"]["largest_group"] >= 1
