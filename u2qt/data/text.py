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


def text_norm(emb: np.ndarray, norm: str) -> dict[str, np.ndarray]:
    """The per-dimension shift and scale of ``norm`` over the item embeddings [I, H] (zeros and
    ones except for "standardize"); ``apply_text_norm`` applies them (and "l2")."""
    if norm not in NORMS:
        raise ValueError(f"config data.text_norm={norm!r}: expected one of {NORMS}")
    if norm == "standardize":
        return {"shift": emb.mean(0).astype(np.float32), "scale": np.maximum(emb.std(0), 1e-6).astype(np.float32)}
    return {"shift": np.zeros(emb.shape[1], np.float32), "scale": np.ones(emb.shape[1], np.float32)}


def apply_text_norm(x, norm: str, stats: dict, xp=np):
    """Sentence embeddings [N, H] → what the models read (numpy, or ``xp=jax.numpy`` in serving)."""
    if norm == "l2":
        return x / xp.maximum(xp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return (x - stats["shift"]) / stats["scale"]


def item_text_table(texts: Sequence[str], cache_dir: str | None, *, norm: str = "none", log=None,
                    with_norm: bool = False):
    """[I + 1, 384] float32: a zero padding row, then the embedding of each text, normalized by
    ``norm`` (config ``data.text_norm``): "standardize" (zero mean, unit variance per dimension
    over the items), "l2" (unit length per item, as RQ-VAE-Recommender feeds its RQ-VAE) or "none".
    ``with_norm``: also return the normalization's statistics (``text_norm``), for serving."""
    if norm not in NORMS:
        raise ValueError(f"config data.text_norm={norm!r}: expected one of {NORMS}")
    from u2qt.text.minilm import embed_texts
    emb = embed_texts(list(texts), cache_dir=cache_dir, log=log).astype(np.float32)
    stats = text_norm(emb, norm)
    emb = apply_text_norm(emb, norm, stats).astype(np.float32)
    table = np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb], 0)
    return (table, stats) if with_norm else table
