"""The standard-library WordPiece tokenizer against the `tokenizers` library, token by token."""
import json
import os

import numpy as np
import pytest

from u2qt.data.synthetic import make_synthetic
from u2qt.prep.wordpiece import WordPiece
from u2qt.text.minilm import default_model_dir

TRICKY = ["Café déjà vu — naïve façade", "日本語のテキスト 中文", "emoji 😀👍🏽 ok", "ctrl\x00\x07chars\ufffd",
          "a" * 150 + " word", "İstanbul ǅ ß ﬁ", "tab\tnew\nline\r\x0bvt\x0cff", "don't stop-me...now!!",
          "\u200bzero width\u2028sep", "ＦＵＬＬ width", "", "   ", "unaffable antidisestablishmentarianism",
          "Lip gloss, 0.5 oz. (15ml) #3 'Rosé' by L'Oréal®; SPF-15/UVA+UVB", "x" * 3000, "word " * 400, "ΣΑΣ ΟΔΟΣ"]


def _hf(path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(path)
    tok.enable_truncation(max_length=256)
    tok.no_padding()
    return tok


def test_the_same_ids_as_the_tokenizers_library():
    path = os.path.join(default_model_dir(), "tokenizer.json")
    hf, ours = _hf(path), WordPiece.from_tokenizer_json(path)
    texts = list(TRICKY) + list(make_synthetic(num_users=10, num_items=200, seed=0)[0].items["text"])
    rng = np.random.default_rng(0)  # random strings over scripts, accents, punctuation, controls, symbols
    ranges = [(0x20, 0x7F), (0xA0, 0x250), (0x300, 0x370), (0x370, 0x530), (0x600, 0x700), (0x2000, 0x2070),
              (0x3000, 0x3100), (0x4E00, 0x4E80), (0xAC00, 0xAC80), (0x1F300, 0x1F650), (0x0, 0x20)]
    for _ in range(400):
        picks = [ranges[i] for i in rng.integers(0, len(ranges), rng.integers(1, 40))]
        texts.append("".join(chr(int(rng.integers(lo, hi))) for lo, hi in picks))
    want = [e.ids for e in hf.encode_batch(texts)]
    got = ours(texts, 256)
    for t, w, g in zip(texts, want, got):
        assert g == w, t[:80]
    assert max(len(g) for g in got) == 256 and got[TRICKY.index("")] == [ours.cls, ours.sep]


def test_every_character_is_classified_as_the_tokenizers_library_does():
    """Each character of the first three planes between two letters: dropped, a space, a word of
    its own (punctuation) or part of the word, as `tokenizers` does it (so the override table for
    characters whose Unicode class changed since `tokenizers`' tables is complete and right)."""
    path = os.path.join(default_model_dir(), "tokenizer.json")
    hf, ours = _hf(path), WordPiece.from_tokenizer_json(path)
    hf.no_truncation()
    texts = [f"a{chr(cp)}b" for cp in range(0x30000) if not 0xD800 <= cp < 0xE000]
    want = [e.ids for e in hf.encode_batch(texts)]
    got = ours(texts, 10**6)
    assert [hex(ord(t[1])) for t, w, g in zip(texts, want, got) if w != g] == []


def test_a_tokenizer_it_does_not_implement_is_refused(tmp_path):
    spec = json.load(open(os.path.join(default_model_dir(), "tokenizer.json")))
    spec["normalizer"]["lowercase"] = False  # a cased BERT
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="normalizer.lowercase is False"):
        WordPiece.from_tokenizer_json(str(tmp_path / "tokenizer.json"))
