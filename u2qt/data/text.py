"""Item text → the table of sentence embeddings every model that reads item text indexes.

Row i + 1 is item index i + 1's text embedding (all-MiniLM-L6-v2, ``u2qt.text.minilm``), row 0
(padding) is zeros. ``standardize`` scales each dimension to zero mean and unit variance over the
items (what the item tokenizers' MLPs train on). Embeddings are cached on disk by the encoder.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def item_text_table(texts: Sequence[str], cache_dir: str | None, *, standardize: bool = False) -> np.ndarray:
    """[I + 1, 384] float32: a zero padding row, then the embedding of each text."""
    from u2qt.text.minilm import embed_texts
    emb = embed_texts(list(texts), cache_dir=cache_dir).astype(np.float32)
    if standardize:
        emb = (emb - emb.mean(0)) / np.maximum(emb.std(0), 1e-6)
    return np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb], 0)
