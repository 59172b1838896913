"""The causal Q-Former of U²QT: learned queries that read the sources in a fixed causal order.

Queries come in one group per source. Group s cross-attends to the tokens of sources 1..s and
self-attends to the queries of groups 1..s, so the sources enter in order (e.g. profile, then
behaviour, then text) and each group summarises "everything up to source s". The mean of all
query outputs is the shared user representation; each group's mean is that source's view.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from u2qt.nn.layers import AttentionBlock


def causal_source_masks(queries_per_source: int, source_lengths: list[int], token_mask):
    """Masks for group-causal attention.

    Returns (self_mask [1, 1, M, M], cross_mask [B, 1, M, T]) with M = S·queries_per_source and
    T = Σ source_lengths; token_mask [B, T] marks valid source tokens.
    """
    num_sources = len(source_lengths)
    query_group = jnp.repeat(jnp.arange(num_sources), queries_per_source)  # [M]
    token_source = jnp.concatenate([jnp.full((n,), s) for s, n in enumerate(source_lengths)])  # [T]
    self_mask = query_group[:, None] >= query_group[None, :]
    cross = query_group[:, None] >= token_source[None, :]
    cross_mask = cross[None] & token_mask.astype(bool)[:, None, :]
    return self_mask[None, None], cross_mask[:, None]


class CausalQFormer(nn.Module):
    num_sources: int
    queries_per_source: int
    dim: int
    num_layers: int
    num_heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, source_tokens: list, source_masks: list, deterministic: bool):
        batch = source_tokens[0].shape[0]
        num_queries = self.num_sources * self.queries_per_source
        queries = self.param("queries", nn.initializers.normal(0.02), (num_queries, self.dim))
        q = jnp.broadcast_to(queries[None], (batch, num_queries, self.dim))
        context = jnp.concatenate(source_tokens, axis=1)
        context = context + self.param(
            "source_embedding", nn.initializers.normal(0.02), (self.num_sources, self.dim))[
            jnp.concatenate([jnp.full((t.shape[1],), s) for s, t in enumerate(source_tokens)])][None]
        self_mask, cross_mask = causal_source_masks(
            self.queries_per_source, [t.shape[1] for t in source_tokens], jnp.concatenate(source_masks, axis=1))
        for layer in range(self.num_layers):
            q = AttentionBlock(self.dim, self.num_heads, self.dropout, name=f"self_{layer}")(
                q, mask=self_mask, deterministic=deterministic)
            q = AttentionBlock(self.dim, self.num_heads, self.dropout, name=f"cross_{layer}")(
                q, context, mask=cross_mask, deterministic=deterministic)
        q = nn.LayerNorm()(q)
        groups = q.reshape(batch, self.num_sources, self.queries_per_source, self.dim)
        return q.mean(axis=1), groups.mean(axis=2)  # shared [B, d], per-source [B, S, d]
