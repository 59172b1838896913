"""RQ-VAE over item text (TIGER, Rajput et al. 2023): the item tokenizers' model.

    z = MLP_enc(x)            x: the item's (standardized) sentence embedding
    (ẑ, codes) = RQ(z)        one codebook stack, ``u2qt.quant.residual``
    x̂ = MLP_dec(z_q)          reconstruction, ||x̂ - x||² / D_x
Parameters live under "encoder", "decoder" and "codebooks_item" of the caller's tree, so a model
that adds its own parts (the DAS user encoder, a recommender's ID table) keeps one flat tree.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from u2qt.nn.layers import MLP
from u2qt.quant import residual as rq

CODEBOOKS = "codebooks_item"


@dataclasses.dataclass(frozen=True)
class RQVAE:
    hidden: tuple[int, ...]  # encoder widths (the decoder mirrors them)
    latent_dim: int
    input_dim: int
    levels: int
    codes: int
    decoder_on: bool = True  # False: no decoder (a model whose loss does not reconstruct)

    @property
    def encoder(self) -> MLP:
        return MLP(tuple(self.hidden) + (self.latent_dim,))

    @property
    def decoder(self) -> MLP:
        return MLP(tuple(reversed(self.hidden)) + (self.input_dim,))

    def init(self, x: jax.Array, encoder_key, decoder_key, codebook_key) -> dict:
        params = {"encoder": self.encoder.init(encoder_key, x)["params"],
                  CODEBOOKS: 0.1 * jax.random.normal(codebook_key, (self.levels, self.codes, self.latent_dim))}
        if self.decoder_on:
            params["decoder"] = self.decoder.init(decoder_key, jnp.zeros((1, self.latent_dim)))["params"]
        return params

    def quantize(self, params, x: jax.Array, qcfg) -> tuple[jax.Array, rq.QuantizeOutput]:
        """(z [B, latent], the quantizer's output) of inputs x [B, D_x]."""
        z = self.encoder.apply({"params": params["encoder"]}, x)
        return z, rq.quantize(z, params[CODEBOOKS], qcfg)

    def reconstruction_error(self, params, z_q: jax.Array, x: jax.Array) -> jax.Array:
        """mean ||MLP_dec(z_q) - x||² over rows and dimensions."""
        return jnp.mean((self.decoder.apply({"params": params["decoder"]}, z_q) - x) ** 2)
