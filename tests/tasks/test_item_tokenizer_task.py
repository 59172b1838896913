"""DAS item tokenizer task (u2qt.tasks.item_tokenizer): a short run on Office through the loop."""
import json
import os

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, shared_data

# Item-text embeddings (and TFDS files) are keyed by content: one persistent cache for every test
# run, so the sentence encoder runs once per machine, not once per test.
TEXT_CACHE = os.environ.get("U2QT_TEXT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "u2qt", "amazon")


def test_short_run_on_office_writes_the_semantic_id_table(tmp_path, compile_cache):
    data = shared_data("amazon-office-2014")
    from u2qt import config as config_lib
    from u2qt.quant.stats import collision_rate
    from u2qt.train.loop import run
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "amazon.py") + ":office,items,runlocal")
    cfg.unlock()
    cfg.data.path = data
    cfg.data.cache_dir = TEXT_CACHE
    summary = run(cfg, str(tmp_path / "run"))
    frame = pd.read_parquet(tmp_path / "run" / "semantic_ids.parquet")
    # Every item, in item-index order (Office's item ids are 0..2419: index i + 1 is id "i").
    assert len(frame) == 2420 and frame["id"].tolist() == [str(i) for i in range(2420)]
    assert list(frame.columns) == ["id", "item_0", "item_1", "item_2", "dedup"]
    full = frame[["item_0", "item_1", "item_2", "dedup"]].to_numpy()
    assert len(np.unique(full, axis=0)) == len(frame)
    assert frame[["item_0", "item_1", "item_2"]].to_numpy().max() < cfg.quantizer.item_codes
    ids = summary["ids"]
    assert ids["unique_after_dedup"] == 1.0
    # The collision-free last level (the config's default): no more collisions than nearest codes,
    # and here none at all (a 2,420-item catalogue in 32 last-level codes per prefix).
    assert summary["collision_rate"] <= ids["nearest_collision_rate"] and summary["collision_rate"] == 0.0
    assert (ids["moved_to_a_free_code"] > 0) == (ids["nearest_collision_rate"] > 0)  # items move only to undo collisions
    # The codes carry the items' latents: decoded through the learned codebooks they are much
    # closer to them than the same codebooks at random codes (a random tokenizer's error ≈ 2).
    z = np.load(tmp_path / "run" / "representations.npy")
    books = np.load(tmp_path / "run" / "codebooks.npz")["item"]
    codes = frame[["item_0", "item_1", "item_2"]].to_numpy()
    decode = lambda c: sum(books[level][c[:, level]] for level in range(3))
    error = lambda c: float(np.sum((z - decode(c)) ** 2) / np.sum(z ** 2))
    random_codes = np.random.default_rng(0).integers(0, cfg.quantizer.item_codes, codes.shape)
    assert error(codes) == pytest.approx(summary["views"]["item"]["relative_quantization_error"], rel=1e-4)
    assert error(codes) <= 0.5 * error(random_codes), (error(codes), error(random_codes))
    # The exported table is the reported one.
    assert collision_rate(frame[["item_0", "item_1", "item_2"]].to_numpy()) == summary["collision_rate"]
    # The results-table script renders the run: both collision rates, in that order.
    import subprocess
    import sys
    table = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "amazon_table.py"), str(tmp_path / "run")],
                           capture_output=True, text=True, check=True).stdout
    row = next(line for line in table.splitlines() if line.startswith("| amazon-office-2014"))
    assert f"| {summary['collision_rate']:.2%} | {ids['nearest_collision_rate']:.2%} |" in row, row
    assert json.load(open(tmp_path / "run" / "summary.json"))["ids"]["largest_group"] >= 1
    # Sizes: 3 codes of 5 bits (32 codes) + the de-dup token, against the float32 latent the codes
    # quantize and against the 384-d MiniLM text embedding a user would otherwise store.
    assert summary["bytes_per_row_float32"] == 4 * cfg.model.latent_dim
    assert summary["bytes_per_row_input_float32"] == 4 * 384
    assert summary["compression_x_input"] == pytest.approx(4 * 384 / summary["bytes_per_row_tokens"])
    # Exported: item text → codes through the bundle's own MiniLM in JAX equals the run's item
    # embedding → codes (the tokenizer is the one training used; the embedding is computed one
    # text per row instead of packed, which moves it by float rounding only).
    from u2qt import serving
    from u2qt.export import export_run
    export_run(str(tmp_path / "run"), str(tmp_path / "bundle"), platforms=("cpu",), log=lambda m: None)
    bundle = serving.load(str(tmp_path / "bundle"))
    some = list(range(0, 2420, 13))
    from u2qt.data.lcrec import read_lcrec
    item_texts = read_lcrec(data, max_description_chars=cfg.data.max_description_chars).item_texts
    got = bundle.text_codes([item_texts[i] for i in some])["item"]
    want = np.asarray(bundle("item_codes", np.asarray(bundle.constants["item_text"])[1:][some])["item"])
    assert got.shape == want.shape == (len(some), 3)
    assert (got == want).all(axis=1).mean() >= 0.99, (got != want).any(axis=1).sum()
    assert bundle.manifest["functions"]["text_codes"]["inputs"]["input_ids"]["shape"] == ["batch", "tokens"]

