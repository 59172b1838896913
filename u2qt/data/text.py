"""Item text → the table of sentence embeddings every model that reads item text indexes.

Row i + 1 is item index i + 1's text embedding (all-MiniLM-L6-v2, ``u2qt.text.minilm``), row 0
(padding) is zeros. ``norm`` (config ``data.text_norm``) standardizes each dimension over the
items (what the item tokenizers' MLPs train on by default) or scales each row to unit length.
Embeddings are cached on disk by the encoder.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


NORMS = ("standardize", "l2", "none")


def item_text_table(texts: Sequence[str], cache_dir: str | None, *, norm: str = "none", log=None) -> np.ndarray:
    """[I + 1, 384] float32: a zero padding row, then the embedding of each text, normalized by
    ``norm`` (config ``data.text_norm``): "standardize" (zero mean, unit variance per dimension
    over the items), "l2" (unit length per item, as RQ-VAE-Recommender feeds its RQ-VAE) or "none"."""
    if norm not in NORMS:
        raise ValueError(f"config data.text_norm={norm!r}: expected one of {NORMS}")
    from u2qt.text.minilm import embed_texts
    emb = embed_texts(list(texts), cache_dir=cache_dir, log=log).astype(np.float32)
    if norm == "standardize":
        emb = (emb - emb.mean(0)) / np.maximum(emb.std(0), 1e-6)
    elif norm == "l2":
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb], 0)
