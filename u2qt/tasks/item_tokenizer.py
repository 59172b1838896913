"""DAS item tokenizer: items → semantic IDs (3 codes × 256 by default, + a de-duplication token).

An RQ-VAE over item text (``u2qt/models/rqvae.py``) with the same quantizer, losses and train
loop as the user tokenizer, plus DAS's alignment terms:
    z = MLP_enc(x̃)                       x̃: the item's sentence embedding (data.text_norm: standardized per dimension by default)
    (ẑ, codes) = RQ(z)                    one codebook stack "item" (k-means init, dead-code resets by the loop)
    L_sem   = ||MLP_dec(z_q) - x̃||² / D_x + codebook + β_c·commitment
    L_align = w_u2i · InfoNCE(user(history), z_q(target))      u2i: a SASRec user encoder trained jointly
            + w_cooc · InfoNCE(z_q(target), z_q(co-occurring))  i2i: the target's neighbour in a sequence
    L = L_sem + β · L_align                                     (``u2qt.losses.total_loss``; L_cf is off: α unused)
Training rows come from the leave-one-out TRAIN part of every sequence only (no validation or
test item is ever a target, a neighbour or a history item), one row per position: the last
``data.max_history`` items before it (left-padded), the item, and one of its sequence neighbours
(the previous or the next one, chosen with the seed; 0 when the sequence has one item).

Collision-free last level (``u2qt.quant.semantic_ids.collision_free_last_level``, config
``quantizer.collision_free_last_level``;
LC-Rec's "uniform semantic mapping", Zheng et al. 2024): items whose nearest codes collide are given
distinct last-level codes within their shared prefix by a minimum-cost assignment on the
last-level distances, so they keep their prefix and take the nearest free code. The report keeps
the nearest-code collision rate next to the final one.
De-duplication (the semantic-ID table's ``dedup`` column): items that still share the full code tuple (a prefix with more
items than codes) get a 4th token 0, 1, 2, … in item-index order, so every semantic ID is unique
and the assignment is deterministic.
"""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from u2qt import losses
from u2qt.data.lcrec import read_lcrec
from u2qt.data.sequences import leave_one_out, position_examples
from u2qt.data.tables import settle_warnings
from u2qt.data.text import apply_text_norm, item_text_table
from u2qt.models.rqvae import CODEBOOKS, RQVAE
from u2qt.models.sasrec import SASRec
from u2qt.prep.wordpiece import pad_rows
from u2qt.quant import residual as rq
from u2qt.quant.codebooks import quantize_on
from u2qt.quant.semantic_ids import collision_free_last_level
from u2qt.tasks.core import EXAMPLE_ROWS, Encoded, ServingFunction
from u2qt.text.minilm import SentenceEncoder, row_embeddings


class ItemTextCodes:
    """``Tokenizes`` for a task whose items get codes from an RQ-VAE over their text (the task
    holds ``rqvae``, ``cfg`` and ``constants["item_text"]``; its rows are item indices under
    ``row_key``)."""
    row_kind = "item"
    row_key = "target"

    @property
    def input_dim(self) -> int:
        """Width of what the codes stand in for: the item text embedding (the size baseline)."""
        return int(self.constants["item_text"].shape[1])

    def codebooks(self, params):
        return {"item": params[CODEBOOKS]}

    def with_codebooks(self, params, books):
        return dict(params, **({CODEBOOKS: books["item"]} if "item" in books else {}))

    def encode(self, params, batch, constants):
        z, q = self.rqvae.quantize(params, constants["item_text"][batch[self.row_key]], self.cfg.quantizer)
        return Encoded({"item": q.codes}, z, {"item": q.residuals})


class ItemTokenizerTask(ItemTextCodes):
    """Items → semantic IDs; capabilities: Tokenizes, Servable.

    With every alignment term off (``loss.beta`` = 0, or both ``w_u2i`` and ``w_cooc`` = 0) this
    is a plain RQ-VAE (TIGER's tokenizer, ``configs/amazon.py:*,rqvae``): it trains on the item
    table, each item once per epoch, and builds neither the SASRec user encoder nor the
    co-occurrence rows. A term with weight 0 is not computed and its modules are not built.
    """
    name = "item_tokenizer"

    def __init__(self, cfg, cache_dir: str, log=print):
        self.cfg = cfg
        c, q, m = cfg.loss, cfg.quantizer, cfg.model
        self.u2i = c.beta > 0 and c.w_u2i > 0
        self.cooc = c.beta > 0 and c.w_cooc > 0
        data = read_lcrec(cfg.data.path, max_description_chars=cfg.data.max_description_chars)
        log(f"data: {data.report.summary()}")
        self.data_warnings = settle_warnings(data.report.warnings, cfg.data.strict, log)
        self.data = data
        self.rows = {"target": np.arange(1, data.num_items + 1, dtype=np.int32)}
        self.row_ids = list(data.item_ids)
        if self.u2i or self.cooc:
            self.examples = position_examples(leave_one_out(data.sequences).train, cfg.data.max_history, cfg.seed)
            self.model_keys = ("target",) + (("history",) if self.u2i else ()) + (("cooc",) if self.cooc else ())
        else:
            self.examples, self.model_keys = self.rows, ("target",)
        table, self.text_norm = item_text_table(data.item_texts, cache_dir, norm=cfg.data.text_norm, log=log,
                                                with_norm=True)
        self.constants = {"item_text": table}
        self.stacks = {"item": (q.item_levels, q.item_codes)}
        self.rqvae = RQVAE(tuple(m.mlp_hidden), m.latent_dim, self.constants["item_text"].shape[1],
                           q.item_levels, q.item_codes)
        if self.u2i:
            self.user_encoder = SASRec(num_items=data.num_items, d_model=m.dim, num_layers=m.seq_layers,
                                       num_heads=m.num_heads, dropout=m.dropout, max_len=cfg.data.max_history)
            self.user_head = nn.Dense(m.latent_dim)
        rows = len(self.examples["target"])
        log(f"data: {data.num_items} items; training rows: {rows} "
            + ("sequence positions (alignment on)" if rows != data.num_items else "the items (a plain RQ-VAE)"))

    # -------------------------------------------------------------- core
    def init(self, key, sample, constants):
        k = jax.random.split(key, 5)
        params = self.rqvae.init(constants["item_text"][sample["target"]], k[0], k[1], k[4])
        if self.u2i:
            params["user_encoder"] = self.user_encoder.init(k[2], sample["history"])["params"]
            params["user_head"] = self.user_head.init(k[3], jnp.zeros((1, self.cfg.model.dim)))["params"]
        return params

    def _quantize(self, params, items, constants):
        return self.rqvae.quantize(params, constants["item_text"][items], self.cfg.quantizer)

    def loss(self, params, batch, constants, key, step):
        c = self.cfg.loss
        on = quantize_on(step, self.cfg.quantizer)
        z, q = self._quantize(params, batch["target"], constants)
        zq = jnp.where(on, q.z_q, z)  # before the k-means init the autoencoder warms up unquantized
        recon = self.rqvae.reconstruction_error(params, zq, constants["item_text"][batch["target"]])
        sem = losses.l_sem({"text": c.recon_weight * recon}, {"item": jnp.where(on, q.loss, 0.0)})
        # Rows outside a term's mask can be exactly 0 (empty history, padding item), where the
        # norm inside InfoNCE has a NaN gradient; they get a constant instead.
        terms = {}
        if self.u2i:
            hidden = self.user_encoder.apply({"params": params["user_encoder"]}, batch["history"], train=True,
                                             rngs={"dropout": key})[:, -1]
            user = self.user_head.apply({"params": params["user_head"]}, hidden)
            has_user = batch["history"][:, -1] > 0
            terms["u2i"] = losses.info_nce(jnp.where(has_user[:, None], user, 1.0), zq, has_user, c.temperature)
        if self.cooc:
            z_c, q_c = self._quantize(params, batch["cooc"], constants)
            zq_c = jnp.where(on, q_c.z_q, z_c)
            has_cooc = batch["cooc"] > 0
            terms["cooc"] = losses.info_nce(zq, jnp.where(has_cooc[:, None], zq_c, 1.0), has_cooc, c.temperature)
        align = losses.l_align(terms, {"u2i": c.w_u2i, "cooc": c.w_cooc}) if terms else jnp.zeros(())
        loss = losses.total_loss(sem, 0.0, align, alpha=0.0, beta=c.beta)
        metrics = {"loss": loss, "l_sem": sem, "l_align": align, "recon": recon, "qloss_item": q.loss,
                   "qerr_item": q.recon_error}
        metrics.update({"u2i" if k == "u2i" else "i2i": v for k, v in terms.items()})
        return loss, {"metrics": metrics, "codes": {"item": q.codes}, "residuals": {"item": q.residuals}}

    # -------------------------------------------------------------- Tokenizes (+ ItemTextCodes)
    def assign_ids(self, params, codes, residuals):
        """The exported codes: with ``quantizer.collision_free_last_level``, colliding items take
        the cheapest free last-level code of their prefix (residuals [N, L, D]: the last entry is
        the last level's input); otherwise the nearest codes."""
        if not self.cfg.quantizer.collision_free_last_level:
            return codes
        last = np.asarray(residuals["item"])[:, -1]
        return {"item": collision_free_last_level(codes["item"], last, np.asarray(params[CODEBOOKS][-1]))}

    def reconstruction_error(self, params, codes, constants) -> float:
        """Mean squared error per element of the decoder's output from the exported codes (their
        codebook vectors) against every item's text embedding: the RQ-VAE's reconstruction."""
        decode = jax.jit(lambda p, c: self.rqvae.decoder.apply(
            {"params": p["decoder"]}, rq.decode_codes(c, p[CODEBOOKS])))
        x, c = np.asarray(constants["item_text"])[1:], np.asarray(codes["item"])
        total = 0.0
        for start in range(0, len(c), 8192):
            x_hat = np.asarray(decode(params, jnp.asarray(c[start:start + 8192])))
            total += float(np.sum((x_hat - x[start:start + 8192]) ** 2))
        return total / max(x.size, 1)

    # -------------------------------------------------------------- Servable
    def serving_functions(self):
        dim = self.constants["item_text"].shape[1]

        def item_codes(params, constants, text_embedding):
            _, q = self.rqvae.quantize(params, text_embedding, self.cfg.quantizer)
            return {"item": q.codes}

        encoder = SentenceEncoder.load()
        bert = encoder.config
        norm = self.cfg.data.text_norm

        def text_codes(params, constants, input_ids):
            emb = row_embeddings(constants["minilm"], input_ids, num_heads=bert.num_heads, eps=bert.layer_norm_eps)
            x = apply_text_norm(emb, norm, constants["text_norm"], xp=jnp)
            _, q = self.rqvae.quantize(params, x, self.cfg.quantizer)
            return {"item": q.codes}

        tokenizer = {"file": "tokenizer.json", "max_length": bert.max_seq_length, "lowercase": bert.do_lower_case}
        example_ids = pad_rows(encoder.tokenize(self.data.item_texts[:EXAMPLE_ROWS]))
        return {"item_codes": ServingFunction(item_codes, {"text_embedding": ((None, dim), np.float32)},
                                              "an item's text embedding (normalized as data.text_norm) → its nearest codes",
                                              example=(np.asarray(self.constants["item_text"][1:EXAMPLE_ROWS + 1]),)),
                "text_codes": ServingFunction(
                    text_codes, {"input_ids": ((None, "tokens"), np.int32)},
                    "an item's text as word-piece ids ([CLS] … [SEP], 0-padded; Bundle.text_codes tokenizes) → all-MiniLM-L6-v2 "
                    "in JAX → data.text_norm → its nearest codes",
                    constants={"minilm": encoder.params, "text_norm": self.text_norm},
                    meta={"tokenizer": tokenizer, "files": {"tokenizer.json": os.path.join(encoder.model_dir, "tokenizer.json")}},
                    example=(example_ids,))}
