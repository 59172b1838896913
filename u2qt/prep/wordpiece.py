"""BERT's uncased WordPiece tokenizer, in the standard library only (numpy for padded batches).

What all-MiniLM-L6-v2's ``tokenizer.json`` describes (``BertNormalizer`` with clean_text,
handle_chinese_chars, lowercase and so accent stripping; ``BertPreTokenizer``; ``WordPiece`` with
"##" continuations and [UNK] for words over 100 characters; [CLS] … [SEP]), so a serving bundle
turns text into token ids without the ``tokenizers`` library, and training uses the same code
(``u2qt.text.minilm``). ``tests/text/test_wordpiece.py`` checks it against ``tokenizers`` token by
token.
"""
from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Sequence

import numpy as np


# Characters whose class (letter L, punctuation P, dropped mark or control M, space Z) in the
# `tokenizers` library's Unicode tables (an older Unicode) differs from this Python's: we follow
# `tokenizers`. (The test rebuilds this list from `tokenizers` and compares.)
OVERRIDES: tuple[tuple[int, int, str], ...] = (
    (0x61D, 0x61D, 'L'), (0x7FD, 0x7FD, 'L'), (0x890, 0x891, 'L'), (0x898, 0x89F, 'L'), (0x8CA, 0x8E2, 'L'),
    (0x9FD, 0x9FE, 'L'), (0xA76, 0xA76, 'L'), (0xAFA, 0xAFF, 'L'), (0xB55, 0xB55, 'L'), (0xC04, 0xC04, 'L'),
    (0xC3C, 0xC3C, 'L'), (0xC77, 0xC77, 'L'), (0xC84, 0xC84, 'L'), (0xD00, 0xD00, 'L'), (0xD3B, 0xD3C, 'L'),
    (0xD81, 0xD81, 'L'), (0xEBA, 0xEBA, 'L'), (0x166D, 0x166D, 'P'), (0x1734, 0x1734, 'M'),
    (0x180F, 0x180F, 'L'), (0x1885, 0x1886, 'L'), (0x1ABF, 0x1ACE, 'L'), (0x1B7D, 0x1B7E, 'L'),
    (0x1DF6, 0x1DFB, 'L'), (0x2E43, 0x2E4F, 'L'), (0x2E52, 0x2E5D, 'L'), (0xA82C, 0xA82C, 'L'),
    (0xA8C5, 0xA8C5, 'L'), (0xA8FF, 0xA8FF, 'L'), (0xA9BD, 0xA9BD, 'L'), (0x10D24, 0x10D27, 'L'),
    (0x10EAB, 0x10EAD, 'L'), (0x10F46, 0x10F50, 'L'), (0x10F55, 0x10F59, 'L'), (0x10F82, 0x10F89, 'L'),
    (0x11070, 0x11070, 'L'), (0x11073, 0x11074, 'L'), (0x110C2, 0x110C2, 'L'), (0x110CD, 0x110CD, 'L'),
    (0x111C9, 0x111C9, 'P'), (0x111CF, 0x111CF, 'L'), (0x1123E, 0x1123E, 'L'), (0x1133B, 0x1133B, 'L'),
    (0x11438, 0x1143F, 'L'), (0x11442, 0x11444, 'L'), (0x11446, 0x11446, 'L'), (0x1144B, 0x1144F, 'L'),
    (0x1145A, 0x1145B, 'L'), (0x1145D, 0x1145E, 'L'), (0x11660, 0x1166C, 'L'), (0x116B9, 0x116B9, 'L'),
    (0x1182F, 0x11837, 'L'), (0x11839, 0x1183B, 'L'), (0x1193B, 0x1193C, 'L'), (0x1193E, 0x1193E, 'L'),
    (0x11943, 0x11946, 'L'), (0x119D4, 0x119D7, 'L'), (0x119DA, 0x119DB, 'L'), (0x119E0, 0x119E0, 'L'),
    (0x119E2, 0x119E2, 'L'), (0x11A01, 0x11A0A, 'L'), (0x11A33, 0x11A38, 'L'), (0x11A3B, 0x11A47, 'L'),
    (0x11A51, 0x11A56, 'L'), (0x11A59, 0x11A5B, 'L'), (0x11A8A, 0x11A96, 'L'), (0x11A98, 0x11A9C, 'L'),
    (0x11A9E, 0x11AA2, 'L'), (0x11C30, 0x11C36, 'L'), (0x11C38, 0x11C3D, 'L'), (0x11C3F, 0x11C3F, 'L'),
    (0x11C41, 0x11C45, 'L'), (0x11C70, 0x11C71, 'L'), (0x11C92, 0x11CA7, 'L'), (0x11CAA, 0x11CB0, 'L'),
    (0x11CB2, 0x11CB3, 'L'), (0x11CB5, 0x11CB6, 'L'), (0x11D31, 0x11D36, 'L'), (0x11D3A, 0x11D3A, 'L'),
    (0x11D3C, 0x11D3D, 'L'), (0x11D3F, 0x11D45, 'L'), (0x11D47, 0x11D47, 'L'), (0x11D90, 0x11D91, 'L'),
    (0x11D95, 0x11D95, 'L'), (0x11D97, 0x11D97, 'L'), (0x11EF3, 0x11EF4, 'L'), (0x11EF7, 0x11EF8, 'L'),
    (0x11FFF, 0x11FFF, 'L'), (0x12FF1, 0x12FF2, 'L'), (0x13430, 0x13438, 'L'), (0x16E97, 0x16E9A, 'L'),
    (0x16F4F, 0x16F4F, 'L'), (0x16FE2, 0x16FE2, 'L'), (0x16FE4, 0x16FE4, 'L'), (0x1CF00, 0x1CF2D, 'L'),
    (0x1CF30, 0x1CF46, 'L'), (0x1E000, 0x1E006, 'L'), (0x1E008, 0x1E018, 'L'), (0x1E01B, 0x1E021, 'L'),
    (0x1E023, 0x1E024, 'L'), (0x1E026, 0x1E02A, 'L'), (0x1E130, 0x1E136, 'L'), (0x1E2AE, 0x1E2AE, 'L'),
    (0x1E2EC, 0x1E2EF, 'L'), (0x1E944, 0x1E94A, 'L'), (0x1E95E, 0x1E95F, 'L'),
)
_OVERRIDE = {cp: kind for lo, hi, kind in OVERRIDES for cp in range(lo, hi + 1)}
_AS_CATEGORY = {"L": "Lo", "P": "Po", "M": "Mn", "Z": "Zs"}


def _category(c: str) -> str:
    kind = _OVERRIDE.get(ord(c))
    return _AS_CATEGORY[kind] if kind else unicodedata.category(c)


def _is_control(c: str) -> bool:
    return c not in "\t\n\r" and _category(c) in ("Cc", "Cf", "Co", "Cs")  # not Cn, as `tokenizers`


def _is_chinese(cp: int) -> bool:
    # BERT's CJK blocks as `tokenizers` writes them (its 0x2B920 where BERT has 0x2B820, so 256
    # ideographs stay inside words there; we follow it)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B920 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_punctuation(c: str) -> bool:
    cp = ord(c)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or _category(c).startswith("P")


def normalize(text: str) -> str:
    """BertNormalizer: drop NUL, U+FFFD and control characters, whitespace → " ", spaces around CJK
    ideographs, accents stripped (NFD without combining marks), lowercase."""
    out = []
    for c in text:
        cp = ord(c)
        if cp == 0 or cp == 0xFFFD or _is_control(c):
            continue
        if _OVERRIDE.get(cp) == "Z" or (cp not in _OVERRIDE and c.isspace()):
            out.append(" ")
        elif _is_chinese(cp):
            out.append(f" {c} ")
        else:
            out.append(c)
    text = unicodedata.normalize("NFD", "".join(out))
    # per character: str.lower() would turn a word-final capital sigma into "ς", tokenizers into "σ"
    return "".join(c.lower() for c in text if _category(c) != "Mn")


def pre_tokenize(text: str) -> list[str]:
    """BertPreTokenizer: split on whitespace; each punctuation character is a word of its own."""
    words = []
    for chunk in text.split():
        word = []
        for c in chunk:
            if _is_punctuation(c):
                if word:
                    words.append("".join(word))
                    word = []
                words.append(c)
            else:
                word.append(c)
        if word:
            words.append("".join(word))
    return words


class WordPiece:
    """Text → token ids: ``WordPiece(vocab_lines)(texts, max_length)``."""

    def __init__(self, vocab: Sequence[str], unk: str = "[UNK]", cls: str = "[CLS]", sep: str = "[SEP]",
                 max_input_chars_per_word: int = 100):
        self.vocab = {token: i for i, token in enumerate(vocab)}
        for t in (unk, cls, sep):
            if t not in self.vocab:
                raise ValueError(f"the vocabulary has no {t} token")
        self.unk, self.cls, self.sep = self.vocab[unk], self.vocab[cls], self.vocab[sep]
        self.max_chars = max_input_chars_per_word
        self._word = functools.lru_cache(maxsize=1 << 16)(self._word_ids)

    @classmethod
    def from_tokenizer_json(cls, path: str) -> "WordPiece":
        """The tokenizer a Hugging Face ``tokenizer.json`` describes, if it is this one (an uncased
        BERT WordPiece); otherwise ValueError naming the part that differs."""
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        norm, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
        want = [("normalizer.type", norm.get("type"), "BertNormalizer"), ("normalizer.lowercase", norm.get("lowercase"), True),
                ("normalizer.clean_text", norm.get("clean_text"), True),
                ("normalizer.handle_chinese_chars", norm.get("handle_chinese_chars"), True),
                ("normalizer.strip_accents", norm.get("strip_accents") in (None, True), True),
                ("pre_tokenizer.type", pre.get("type"), "BertPreTokenizer"), ("model.type", model.get("type"), "WordPiece"),
                ("model.continuing_subword_prefix", model.get("continuing_subword_prefix"), "##")]
        for key, got, expected in want:
            if got != expected:
                raise ValueError(f"{path}: {key} is {got!r}; u2qt's tokenizer implements uncased BERT WordPiece "
                                 f"({key} = {expected!r})")
        vocab = sorted(model["vocab"], key=model["vocab"].get)
        return cls(vocab, unk=model.get("unk_token", "[UNK]"),
                   max_input_chars_per_word=int(model.get("max_input_chars_per_word", 100)))

    def _word_ids(self, word: str) -> tuple[int, ...]:
        if len(word) > self.max_chars:
            return (self.unk,)
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return (self.unk,)
            start = end
        return tuple(ids)

    def tokenize(self, text: str) -> list[int]:
        """Word-piece ids of one text, without [CLS]/[SEP]."""
        return [i for w in pre_tokenize(normalize(text)) for i in self._word(w)]

    def __call__(self, texts: Sequence[str], max_length: int, lowercase: bool = False) -> list[list[int]]:
        """[CLS] + ids + [SEP] per text, the ids cut so the whole fits ``max_length``. ``lowercase``:
        ``str.lower()`` each text first, as sentence-transformers does for a ``do_lower_case`` model."""
        if isinstance(texts, str):
            raise TypeError("takes a sequence of texts, not one str")
        texts = [str(t).lower() if lowercase else str(t) for t in texts]
        return [[self.cls, *self.tokenize(t)[:max_length - 2], self.sep] for t in texts]


def pad_rows(ids: Sequence[Sequence[int]], width: int | None = None) -> np.ndarray:
    """Rows of token ids → [N, width] int32, 0-padded ([PAD]); width: the longest row by default."""
    width = max(map(len, ids), default=0) if width is None else width
    out = np.zeros((len(ids), width), np.int32)
    for i, row in enumerate(ids):
        out[i, :len(row)] = row
    return out
