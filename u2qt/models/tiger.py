"""TIGER (Rajput et al. 2023, "Recommender Systems with Generative Retrieval"): a T5-style
encoder-decoder that reads a user's history as semantic-ID tokens and decodes the next item's
semantic ID, one code level per decoder step.

Tokens (one vocabulary, level offsets inside the model, so IDs from any table fit):
    0 = padding, 1 = BOS, 2 .. 2 + U - 1 = the hashed user token (U buckets),
    then level l's codes at FIRST_CODE + offset_l + code, offset_l = Σ_{j<l} K_j.
Encoder input: [user token, codes of the (up to) H history items, level by level] = 1 + H·L
positions with learned absolute positions (histories are left-padded, so the latest item is
always last). Decoder input: [BOS, c_0, ..., c_{L-2}] → targets [c_0, ..., c_{L-1}] of the next
item. The output head of level l is tied to level l's rows of the token embedding:

    log p(c_l | history, c_<l) = log_softmax_k( h_l · E[FIRST_CODE + offset_l + k] / sqrt(d) ),  k < K_l

and training minimises  L = - Σ_l log p(c_l | history, c_<l)  averaged over examples (teacher
forcing). Pre-LayerNorm blocks, multi-head attention with ``heads × d_kv`` inner width (T5's
6 × 64 by default), GELU MLP, dropout. Decoding (``u2qt/models/decoding.py``) runs the decoder one
level at a time with a self-attention cache and the encoder's cross-attention keys/values computed
once per user and shared by all beams (``cross_kv``, ``decode_step``).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PAD, BOS, FIRST_USER = 0, 1, 2
NEG = -1e9


class Attention(nn.Module):
    heads: int
    d_kv: int
    d_model: int
    dropout: float
    dtype: Any = jnp.float32

    def setup(self):
        dense = lambda: nn.DenseGeneral((self.heads, self.d_kv), use_bias=False, dtype=self.dtype)
        self.q, self.k, self.v = dense(), dense(), dense()
        self.o = nn.DenseGeneral(self.d_model, axis=(-2, -1), use_bias=False, dtype=self.dtype)
        self.drop = nn.Dropout(self.dropout)

    def kv(self, x):
        return self.k(x), self.v(x)

    def __call__(self, x, k, v, mask, deterministic: bool):
        """x [..., T, d] attends to k, v [..., S, H, Dh] (leading dims broadcast); mask [..., T, S]."""
        q = self.q(x) / np.sqrt(self.d_kv).astype(np.float32)
        logits = jnp.einsum("...thd,...shd->...hts", q, k)
        logits = jnp.where(mask[..., None, :, :], logits, NEG)
        weights = self.drop(jax.nn.softmax(logits.astype(jnp.float32), -1).astype(x.dtype),
                            deterministic=deterministic)
        return self.o(jnp.einsum("...hts,...shd->...thd", weights, v))


class MLP(nn.Module):
    d_model: int
    hidden: int
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        h = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype)(x))
        return nn.Dense(self.d_model, dtype=self.dtype)(nn.Dropout(self.dropout)(h, deterministic=deterministic))


class _Block(nn.Module):
    """The sizes every encoder and decoder layer shares."""
    heads: int
    d_kv: int
    d_model: int
    mlp: int
    dropout: float
    dtype: Any = jnp.float32

    def parts(self):
        """A LayerNorm, attention and MLP factory at this block's sizes and compute dtype."""
        return (lambda: nn.LayerNorm(dtype=self.dtype),
                lambda: Attention(self.heads, self.d_kv, self.d_model, self.dropout, self.dtype),
                lambda: MLP(self.d_model, self.mlp, self.dropout, self.dtype))


class EncoderLayer(_Block):
    def setup(self):
        norm, attention, mlp = self.parts()
        self.ln1, self.ln2 = norm(), norm()
        self.attn = attention()
        self.ff = mlp()
        self.drop = nn.Dropout(self.dropout)

    def __call__(self, x, mask, deterministic: bool):
        h = self.ln1(x)
        k, v = self.attn.kv(h)
        x = x + self.drop(self.attn(h, k, v, mask, deterministic), deterministic=deterministic)
        return x + self.drop(self.ff(self.ln2(x), deterministic), deterministic=deterministic)


class DecoderLayer(_Block):
    def setup(self):
        norm, attention, mlp = self.parts()
        self.ln1, self.ln2, self.ln3 = norm(), norm(), norm()
        self.self_attn, self.cross_attn = attention(), attention()
        self.ff = mlp()
        self.drop = nn.Dropout(self.dropout)

    def cross_kv(self, enc):
        return self.cross_attn.kv(enc)

    def self_kv(self, x):
        """The self-attention keys/values of positions ``x`` (what the decoding cache stores)."""
        return self.self_attn.kv(self.ln1(x))

    def __call__(self, x, self_k, self_v, self_mask, cross_k, cross_v, cross_mask, deterministic: bool):
        """x [B, W, T, d]; self_k/v [B, W, T', H, Dh]; cross_k/v [B, 1, S, H, Dh] (shared by beams)."""
        d = lambda y: self.drop(y, deterministic=deterministic)
        x = x + d(self.self_attn(self.ln1(x), self_k, self_v, self_mask, deterministic))
        x = x + d(self.cross_attn(self.ln2(x), cross_k, cross_v, cross_mask, deterministic))
        return x + d(self.ff(self.ln3(x), deterministic))


class Tiger(nn.Module):
    level_sizes: tuple[int, ...]  # K_l of each code level (the de-dup token is the last level)
    user_buckets: int = 2000
    max_history: int = 20
    d_model: int = 128
    heads: int = 6
    d_kv: int = 64
    mlp: int = 1024
    encoder_layers: int = 4
    decoder_layers: int = 4
    dropout: float = 0.1
    dtype: Any = jnp.float32  # compute dtype (bfloat16 on accelerators); parameters and logits stay float32

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    @property
    def first_code(self) -> int:
        return FIRST_USER + self.user_buckets

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.level_sizes)[:-1]]).astype(np.int32)

    @property
    def vocab(self) -> int:
        return self.first_code + int(sum(self.level_sizes))

    def setup(self):
        layer = dict(heads=self.heads, d_kv=self.d_kv, d_model=self.d_model, mlp=self.mlp, dropout=self.dropout,
                     dtype=self.dtype)
        self.embed = nn.Embed(self.vocab, self.d_model, embedding_init=nn.initializers.normal(1.0), dtype=self.dtype)
        self.enc_pos = nn.Embed(1 + self.max_history * self.levels, self.d_model,
                                embedding_init=nn.initializers.normal(0.02), dtype=self.dtype)
        self.dec_pos = nn.Embed(self.levels, self.d_model, embedding_init=nn.initializers.normal(0.02),
                                dtype=self.dtype)
        self.encoder = [EncoderLayer(**layer) for _ in range(self.encoder_layers)]
        self.decoder = [DecoderLayer(**layer) for _ in range(self.decoder_layers)]
        self.enc_norm, self.dec_norm = nn.LayerNorm(dtype=self.dtype), nn.LayerNorm(dtype=self.dtype)
        self.drop = nn.Dropout(self.dropout)

    # ------------------------------------------------------------------ tokens
    def code_tokens(self, codes):
        """codes [..., L] → their tokens (level offsets added)."""
        return self.first_code + jnp.asarray(self.offsets) + codes

    def encoder_tokens(self, history, user, codes_table):
        """history [B, H] item indices (0 = padding), user [B] buckets, codes_table [I + 1, L]
        → tokens [B, 1 + H·L] and their mask."""
        items = self.code_tokens(codes_table[history])                       # [B, H, L]
        items = jnp.where(history[..., None] > 0, items, PAD).reshape(history.shape[0], -1)
        tokens = jnp.concatenate([(FIRST_USER + user)[:, None], items], 1)
        return tokens, tokens != PAD

    # ------------------------------------------------------------------ encoder
    def encoder_positions(self, length: int):
        """Positions of [user, the last (length - 1) / L items' tokens]: the items keep the positions
        they have in the full window, so a history cut to its last items (the rest padding)
        encodes exactly as the full one."""
        full = 1 + self.max_history * self.levels
        return jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.arange(full - (length - 1), full)])

    def encode(self, tokens, mask, deterministic: bool = True):
        x = self.embed(tokens) + self.enc_pos(self.encoder_positions(tokens.shape[1]))
        x = self.drop(x, deterministic=deterministic)
        pair = mask[:, None, :] & mask[:, :, None] | jnp.eye(tokens.shape[1], dtype=bool)  # padding sees itself
        for layer in self.encoder:
            x = layer(x, pair, deterministic)
        return self.enc_norm(x)

    def cross_kv(self, enc):
        """Each decoder layer's cross-attention keys/values of the encoder output, [B, 1, S, H, Dh]
        (computed once per user; the beams share them)."""
        return [tuple(t[:, None] for t in layer.cross_kv(enc)) for layer in self.decoder]

    # ------------------------------------------------------------------ decoder
    def _dec_in(self, tokens, positions, deterministic):
        return self.drop(self.embed(tokens) + self.dec_pos(positions), deterministic=deterministic)

    def decode(self, dec_tokens, cross, enc_mask, deterministic: bool = True):
        """Teacher forcing: dec_tokens [B, W, T] → hidden [B, W, T, d] (causal)."""
        T = dec_tokens.shape[-1]
        x = self._dec_in(dec_tokens, jnp.arange(T), deterministic)
        causal = jnp.tril(jnp.ones((T, T), bool))
        cross_mask = enc_mask[:, None, None, :]
        for layer, (ck, cv) in zip(self.decoder, cross):
            k, v = layer.self_kv(x)
            x = layer(x, k, v, causal, ck, cv, cross_mask, deterministic)
        return self.dec_norm(x)

    def decode_step(self, token, t, cache, cross, enc_mask):
        """One decoder position: token [B, W] at position t (traced) → hidden [B, W, d], the cache
        with position t's self-attention keys/values written. cache: per layer (k, v) [B, W, L, H, Dh]."""
        x = self._dec_in(token[..., None], jnp.full((1,), t), True)           # [B, W, 1, d]
        visible = (jnp.arange(self.levels) <= t)[None, :]                     # [1, L]
        cross_mask = enc_mask[:, None, None, :]
        new_cache = []
        for layer, (ck, cv), (k, v) in zip(self.decoder, cross, cache):
            kt, vt = layer.self_kv(x)
            k = jax.lax.dynamic_update_slice_in_dim(k, kt, t, axis=2)
            v = jax.lax.dynamic_update_slice_in_dim(v, vt, t, axis=2)
            new_cache.append((k, v))
            x = layer(x, k, v, visible, ck, cv, cross_mask, True)
        return self.dec_norm(x)[..., 0, :], new_cache

    def empty_cache(self, batch: int, beams: int):
        shape, dtype = (batch, beams, self.levels, self.heads, self.d_kv), self.dtype
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.decoder]

    def level_logits(self, hidden, level):
        """hidden [..., d] at decoder position ``level`` (int or traced) → [..., K_max] logits over
        that level's codes (tied to the token embedding; codes ≥ K_l get NEG)."""
        k_max = max(self.level_sizes)
        rows = self.first_code + jnp.asarray(self.offsets)[level] + jnp.arange(k_max)
        sizes = jnp.asarray(self.level_sizes)[level]
        table = self.embed.embedding[jnp.minimum(rows, self.vocab - 1)]      # [K_max, d]
        logits = hidden.astype(jnp.float32) @ table.T / np.sqrt(self.d_model).astype(np.float32)
        return jnp.where(jnp.arange(k_max) < sizes, logits, NEG)

    def all_level_logits(self, hidden):
        """hidden [..., L, d] (position l predicts level l) → [..., L, K_max]."""
        return jnp.stack([self.level_logits(hidden[..., l, :], l) for l in range(self.levels)], -2)

    # ------------------------------------------------------------------ training
    def __call__(self, history, user, target, codes_table, deterministic: bool = True):
        """Teacher-forced logits [B, L, K_max] of the next item's codes, and those codes [B, L]."""
        tokens, mask = self.encoder_tokens(history, user, codes_table)
        enc = self.encode(tokens, mask, deterministic)
        codes = codes_table[target]                                          # [B, L]
        dec_tokens = jnp.concatenate([jnp.full_like(codes[:, :1], BOS), self.code_tokens(codes)[:, :-1]], 1)
        hidden = self.decode(dec_tokens[:, None], self.cross_kv(enc), mask, deterministic)[:, 0]
        return self.all_level_logits(hidden), codes


def tiger_loss(model: Tiger, params, batch: dict, codes_table, dropout_rng=None):
    """L = - Σ_l log p(c_l | history, c_<l), mean over the batch; also the per-level accuracy
    of the teacher-forced argmax and the exact-match rate of all levels."""
    logits, codes = model.apply({"params": params}, batch["history"], batch["user"], batch["target"], codes_table,
                                deterministic=dropout_rng is None,
                                rngs={"dropout": dropout_rng} if dropout_rng is not None else {})
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    nll = -jnp.take_along_axis(logp, codes[..., None], -1)[..., 0]         # [B, L]
    loss = jnp.mean(jnp.sum(nll, -1))
    hit = jnp.argmax(logits, -1) == codes
    metrics = {"loss": loss, "exact_match": jnp.mean(jnp.all(hit, -1))}
    metrics.update({f"acc_level{l}": jnp.mean(hit[:, l]) for l in range(codes.shape[1])})
    return loss, metrics
