"""Building blocks shared by every model: the attention block, the feed-forward, an MLP, and the
masked mean (one function for means over rows and pooling over tokens)."""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def masked_mean(values: jax.Array, mask: jax.Array | None = None, axis: int | None = None) -> jax.Array:
    """Mean of ``values`` where ``mask`` is set (a mask over the leading dims of ``values``).

    axis=None: one number over every masked entry (e.g. a loss over valid rows);
    axis=1 with values [B, T, d] and mask [B, T]: per-row pooling over valid tokens → [B, d].
    An all-masked reduction gives 0, never NaN.
    """
    if mask is None:
        return jnp.mean(values, axis=axis)
    m = mask.astype(values.dtype if axis is not None else jnp.float32)
    m = m.reshape(m.shape + (1,) * (values.ndim - m.ndim))
    return jnp.sum(values * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)


class FeedForward(nn.Module):
    """W_2 gelu(W_1 x + b_1) + b_2; ``zero_out`` starts W_2 at zero (the block adds nothing at init)."""
    dim: int
    hidden: int
    dropout: float = 0.0
    zero_out: bool = False

    @nn.compact
    def __call__(self, x, deterministic: bool):
        y = nn.Dense(self.hidden)(x)
        y = nn.gelu(y)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        out_init = nn.initializers.zeros if self.zero_out else nn.linear.default_kernel_init
        return nn.Dense(self.dim, kernel_init=out_init)(y)


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


class MLP(nn.Module):
    """Dense layers with GELU between them (none after the last)."""
    features: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            x = nn.Dense(f)(x)
            if i < len(self.features) - 1:
                x = nn.gelu(x)
        return x
