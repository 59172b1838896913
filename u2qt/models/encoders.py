"""Per-source encoders: each turns one source of what is known about a user into tokens [B, T, d].

Every encoder returns (tokens, mask) and prepends one learned, always-valid source token, so a
user with nothing in a source (no events, no attributes) still has a well-defined encoding.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from u2qt.nn.layers import AttentionBlock


def _with_source_token(module: nn.Module, tokens, mask, dim: int):
    start = module.param("source_token", nn.initializers.normal(0.02), (1, 1, dim))
    start = jnp.broadcast_to(start, (tokens.shape[0], 1, dim)).astype(tokens.dtype)
    tokens = jnp.concatenate([start, tokens], axis=1)
    mask = jnp.concatenate([jnp.ones((mask.shape[0], 1), bool), mask.astype(bool)], axis=1)
    return tokens, mask


class TabularEncoder(nn.Module):
    """One token per field: an embedding per categorical field, a projection per numeric field."""
    cat_sizes: Sequence[int]  # vocabulary size per categorical field, id 0 = missing
    num_numeric: int
    dim: int

    @nn.compact
    def __call__(self, cat, num, num_mask):
        batch = cat.shape[0]
        tokens, masks = [], []
        for f, size in enumerate(self.cat_sizes):
            tokens.append(nn.Embed(size + 1, self.dim, name=f"field_{f}")(cat[:, f]))
            masks.append(cat[:, f] > 0)
        if self.num_numeric:
            scale = self.param("num_scale", nn.initializers.normal(0.1), (self.num_numeric, self.dim))
            bias = self.param("num_bias", nn.initializers.normal(0.02), (self.num_numeric, self.dim))
            missing = self.param("num_missing", nn.initializers.normal(0.02), (self.num_numeric, self.dim))
            present = num_mask[..., None]
            num_tokens = present * (num[..., None] * scale + bias) + (1 - present) * missing
            tokens.extend(num_tokens[:, f] for f in range(self.num_numeric))
            masks.extend(jnp.ones((batch,), bool) for _ in range(self.num_numeric))
        if tokens:
            field_tokens = jnp.stack(tokens, axis=1)
            field_tokens = field_tokens + self.param(
                "field_embedding", nn.initializers.normal(0.02), (len(tokens), self.dim))[None]
            field_mask = jnp.stack(masks, axis=1)
        else:
            field_tokens = jnp.zeros((batch, 0, self.dim))
            field_mask = jnp.zeros((batch, 0), bool)
        return _with_source_token(self, field_tokens, field_mask, self.dim)


class SequenceEncoder(nn.Module):
    """Behaviour: a transformer over the user's events (item embedding + time features + position)."""
    num_items: int
    max_events: int
    dim: int
    num_layers: int
    num_heads: int
    dropout: float = 0.0

    def setup(self):
        self.item_embedding = nn.Embed(self.num_items + 1, self.dim, embedding_init=nn.initializers.normal(0.05))
        self.event_proj = nn.Dense(self.dim)
        self.position = self.param("position", nn.initializers.normal(0.02), (self.max_events, self.dim))
        self.blocks = [AttentionBlock(self.dim, self.num_heads, self.dropout) for _ in range(self.num_layers)]
        self.norm = nn.LayerNorm()
        self.source_token = self.param("source_token", nn.initializers.normal(0.02), (1, 1, self.dim))

    def __call__(self, items, event_feats, mask, deterministic: bool):
        x = self.item_embedding(items) + self.event_proj(event_feats) + self.position[None, : items.shape[1]]
        start = jnp.broadcast_to(self.source_token, (items.shape[0], 1, self.dim))
        x = jnp.concatenate([start, x], axis=1)
        mask = jnp.concatenate([jnp.ones((mask.shape[0], 1), bool), mask.astype(bool)], axis=1)
        attn_mask = nn.make_attention_mask(mask, mask)
        for block in self.blocks:
            x = block(x, mask=attn_mask, deterministic=deterministic)
        return self.norm(x), mask

    def item_table(self):
        """The item embedding table [I+1, d], also the output layer of L_cf and behaviour decoding."""
        return self.item_embedding.embedding


class TextEncoder(nn.Module):
    """Text: a projection of the (frozen) sentence embeddings of the user's items."""
    dim: int

    @nn.compact
    def __call__(self, text_embeddings, mask):
        x = nn.Dense(self.dim)(text_embeddings)
        x = x + nn.Dense(self.dim)(nn.gelu(nn.Dense(self.dim)(x)))
        return _with_source_token(self, nn.LayerNorm()(x), mask, self.dim)
