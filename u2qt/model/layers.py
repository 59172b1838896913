"""Transformer building blocks shared by the sequence encoder and the Q-Former."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class FeedForward(nn.Module):
    dim: int
    hidden: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool):
        y = nn.Dense(self.hidden)(x)
        y = nn.gelu(y)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        return nn.Dense(self.dim)(y)


class AttentionBlock(nn.Module):
    """Pre-LayerNorm attention (self- or cross-) followed by a feed-forward, both residual."""
    dim: int
    num_heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, context=None, mask=None, deterministic: bool = True):
        h = nn.LayerNorm()(x)
        kv = h if context is None else context
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=self.dim, dropout_rate=self.dropout,
            deterministic=deterministic)(h, kv, mask=mask)
        x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = FeedForward(self.dim, 4 * self.dim, self.dropout)(nn.LayerNorm()(x), deterministic)
        return x + nn.Dropout(self.dropout)(h, deterministic=deterministic)


def masked_mean_pool(tokens: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Mean of the valid tokens [B, T, d] → [B, d] (zeros where none is valid)."""
    m = mask.astype(tokens.dtype)[..., None]
    return jnp.sum(tokens * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
