"""DAS item tokenizer: items → semantic IDs (3 codes × 256 by default, + a de-duplication token).

The same quantizer, losses and train loop as the user tokenizer (``u2qt/train/task.py``):
    z = MLP_enc(x̃)                       x̃: the item's sentence embedding, standardized per dimension
    (ẑ, codes) = RQ(z)                    one codebook stack "item" (k-means init, dead-code resets by the loop)
    L_sem   = ||MLP_dec(z_q) - x̃||² / D_x + codebook + β_c·commitment
    L_align = w_u2i · InfoNCE(user(history), z_q(target))      u2i: a SASRec user encoder trained jointly
            + w_cooc · InfoNCE(z_q(target), z_q(co-occurring))  i2i: the target's neighbour in a sequence
    L = L_sem + β · L_align                                     (``u2qt.losses.total_loss``; L_cf is off: α unused)
Training rows come from the leave-one-out TRAIN part of every sequence only (no validation or
test item is ever a target, a neighbour or a history item), one row per position: the last
``data.max_history`` items before it (left-padded), the item, and one of its sequence neighbours
(the previous or the next one, chosen with the seed; 0 when the sequence has one item).

Collision-free last level (``collision_free_last_level``, config ``quantizer.collision_free_last_level``;
LC-Rec's "uniform semantic mapping", Zheng et al. 2024): items whose nearest codes collide are given
distinct last-level codes within their shared prefix by a minimum-cost assignment on the
last-level distances, so they keep their prefix and take the nearest free code. The report keeps
the nearest-code collision rate next to the final one.
De-duplication (``dedup_tokens``): items that still share the full code tuple (a prefix with more
items than codes) get a 4th token 0, 1, 2, … in item-index order, so every semantic ID is unique
and the assignment is deterministic.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from u2qt import losses
from u2qt.data.lcrec import LCRecData, read_lcrec
from u2qt.eval.ranking import leave_one_out
from u2qt.model import quantizer as rq
from u2qt.model.sasrec import SASRec
from u2qt.train import report


# ----------------------------------------------------------------------------- data
def item_text_embeddings(data: LCRecData, cache_dir: str | None) -> np.ndarray:
    """[I + 1, 384] sentence embeddings of the items' text, standardized per dimension over the
    items (zero mean, unit variance), row 0 (padding) = zeros. Cached on disk by the encoder."""
    from u2qt.text.minilm import embed_texts
    emb = embed_texts(data.item_texts, cache_dir=cache_dir).astype(np.float32)
    emb = (emb - emb.mean(0)) / np.maximum(emb.std(0), 1e-6)
    return np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb], 0)


def tokenizer_examples(train: Sequence[np.ndarray], max_history: int, seed: int) -> dict[str, np.ndarray]:
    """One row per position of the training sequences: history [N, H] (left-padded), target [N],
    cooc [N] (the previous or next item of the same sequence, picked with ``seed``; 0 if none)."""
    rng = np.random.default_rng(seed)
    rows = sum(len(s) for s in train)
    history = np.zeros((rows, max_history), np.int32)
    target = np.zeros(rows, np.int32)
    cooc = np.zeros(rows, np.int32)
    r = 0
    for seq in train:
        seq = np.asarray(seq, np.int32)
        n = seq.size
        for j in range(n):
            before = seq[max(0, j - max_history):j]
            history[r, max_history - before.size:] = before
            target[r] = seq[j]
            neighbours = [seq[k] for k in (j - 1, j + 1) if 0 <= k < n]
            cooc[r] = neighbours[rng.integers(len(neighbours))] if neighbours else 0
            r += 1
    return {"history": history, "target": target, "cooc": cooc}


# ----------------------------------------------------------------------------- collisions, de-duplication
def dedup_tokens(codes: np.ndarray) -> np.ndarray:
    """The 4th token of each item [N]: its rank among the items with the same code tuple, in row
    order (0 for the first, 1 for the second, …). (codes, token) is unique for every row."""
    codes = np.asarray(codes)
    if len(codes) == 0:
        return np.zeros(0, np.int32)
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")  # rows of each group together, in row order
    sorted_group = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    token = np.empty(len(codes), np.int32)
    token[order] = np.arange(len(order)) - first
    return token


def collision_free_last_level(codes: np.ndarray, last_residuals: np.ndarray, last_codebook: np.ndarray) -> np.ndarray:
    """codes [N, L] (each level's nearest code), last_residuals [N, D] (the last level's input),
    last_codebook [K, D] -> codes [N, L] where the items of every prefix codes[:, :L-1] that holds a
    collision get distinct last codes: the assignment of that prefix's items to the K codes with
    the least total squared distance (scipy's linear_sum_assignment). A prefix without collision
    keeps its nearest codes (they are the optimum); one with more than K items keeps K of them
    assigned and the rest at their nearest code. Levels before the last never change."""
    from scipy.optimize import linear_sum_assignment
    codes = np.array(codes)
    if len(codes) < 2:
        return codes
    _, full, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    collides = counts[full.reshape(-1)] > 1
    _, prefix = np.unique(codes[:, :-1], axis=0, return_inverse=True)
    prefix = prefix.reshape(-1)
    for group in np.unique(prefix[collides]):
        members = np.flatnonzero(prefix == group)
        cost = np.sum((last_residuals[members][:, None, :] - last_codebook[None]) ** 2, -1)
        rows, cols = linear_sum_assignment(cost)
        codes[members[rows], -1] = cols
    return codes


def collision_stats(codes: np.ndarray) -> dict:
    """Collision rate of the full code tuple (fraction of items sharing it), the largest group,
    the number of distinct IDs, and whether (codes, de-dup token) makes every ID unique."""
    codes = np.asarray(codes)
    _, counts = np.unique(codes, axis=0, return_counts=True)
    with_token = np.concatenate([codes, dedup_tokens(codes)[:, None]], 1)
    return {"collision_rate": report.collision_rate(codes),
            "largest_group": int(counts.max()) if len(counts) else 0,
            "distinct_ids": int(len(counts)),
            "unique_after_dedup": float(len(np.unique(with_token, axis=0)) / max(len(codes), 1)),
            "max_dedup_token": int(with_token[:, -1].max()) if len(codes) else 0}


def write_item_table(path: str, item_ids: list[str], codes: np.ndarray) -> None:
    """item_id, item_index (1..I), item_0 … item_{L-1}, dedup: the item → semantic ID table."""
    import pandas as pd
    columns = {"item_id": pd.Series(item_ids, dtype=str),
               "item_index": np.arange(1, len(item_ids) + 1, dtype=np.int32)}
    for level in range(codes.shape[1]):
        columns[f"item_{level}"] = codes[:, level].astype(np.int32)
    columns["dedup"] = dedup_tokens(codes)
    tmp = path + ".tmp"
    pd.DataFrame(columns).to_parquet(tmp, index=False)
    os.replace(tmp, path)


def read_item_codes(path: str, num_items: int, with_dedup: bool = True) -> np.ndarray:
    """Codes [I + 1, L (+1)] from an item table (row 0, padding, all zeros)."""
    import pandas as pd
    frame = pd.read_parquet(path)
    cols = sorted((c for c in frame.columns if c.startswith("item_") and c[5:].isdigit()), key=lambda c: int(c[5:]))
    if with_dedup:
        cols.append("dedup")
    index = frame["item_index"].to_numpy()
    if len(frame) != num_items or sorted(index.tolist()) != list(range(1, num_items + 1)):
        raise ValueError(f"{path}: the item table covers {len(frame)} items, the data set {num_items}")
    codes = np.zeros((num_items + 1, len(cols)), np.int32)
    codes[index] = frame[cols].to_numpy()
    return codes


# ----------------------------------------------------------------------------- modules
class MLP(nn.Module):
    """Dense layers with GELU between them (none after the last)."""
    features: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            x = nn.Dense(f)(x)
            if i < len(self.features) - 1:
                x = nn.gelu(x)
        return x


class ItemTokenizerTask:
    """Items → semantic IDs, trained by the one loop (``u2qt/train/loop.py``)."""
    name = "das_items"
    model_keys = ("history", "target", "cooc")
    labels = None

    def __init__(self, cfg, cache_dir: str, log=print):
        self.cfg = cfg
        data = read_lcrec(cfg.data.path, max_description_chars=cfg.data.max_description_chars)
        log(f"data: {data.report.summary()}")
        self.data = data
        split = leave_one_out(data.sequences)
        self.train_examples = tokenizer_examples(split.train, cfg.data.max_history, cfg.seed)
        self.encode_examples = {"target": np.arange(1, data.num_items + 1, dtype=np.int32)}
        self.export_ids = list(data.item_ids)
        self.constants = {"item_text": item_text_embeddings(data, cache_dir)}
        q, m = cfg.quantizer, cfg.model
        self.stacks = {"item": (q.item_levels, q.item_codes)}
        text_dim = self.constants["item_text"].shape[1]
        self.encoder = MLP(tuple(m.mlp_hidden) + (m.latent_dim,))
        self.decoder = MLP(tuple(reversed(m.mlp_hidden)) + (text_dim,))
        self.user_encoder = SASRec(num_items=data.num_items, d_model=m.dim, num_layers=m.seq_layers,
                                   num_heads=m.num_heads, dropout=m.dropout, max_len=cfg.data.max_history)
        self.user_head = nn.Dense(m.latent_dim)
        log(f"data: {data.num_items} items, {len(self.train_examples['target'])} training positions")

    # -------------------------------------------------------------- the Task protocol
    def init(self, key, sample, constants):
        k = jax.random.split(key, 5)
        x = constants["item_text"][sample["target"]]
        z = self.encoder.init(k[0], x)["params"]
        levels, codes = self.stacks["item"]
        return {"encoder": z,
                "decoder": self.decoder.init(k[1], jnp.zeros((1, self.cfg.model.latent_dim)))["params"],
                "user_encoder": self.user_encoder.init(k[2], sample["history"])["params"],
                "user_head": self.user_head.init(k[3], jnp.zeros((1, self.cfg.model.dim)))["params"],
                "codebooks_item": 0.1 * jax.random.normal(k[4], (levels, codes, self.cfg.model.latent_dim))}

    def _quantize(self, params, items, constants):
        z = self.encoder.apply({"params": params["encoder"]}, constants["item_text"][items])
        return z, rq.quantize(z, params["codebooks_item"], self.cfg.quantizer)

    def objective(self, params, batch, constants, key, quantize_on):
        c = self.cfg.loss
        z, q = self._quantize(params, batch["target"], constants)
        z_c, q_c = self._quantize(params, batch["cooc"], constants)
        zq = jnp.where(quantize_on, q.z_q, z)  # before the k-means init the autoencoder warms up unquantized
        zq_c = jnp.where(quantize_on, q_c.z_q, z_c)
        x = constants["item_text"][batch["target"]]
        recon = jnp.mean((self.decoder.apply({"params": params["decoder"]}, zq) - x) ** 2)
        sem = losses.l_sem({"text": c.recon_weight * recon}, {"item": jnp.where(quantize_on, q.loss, 0.0)})
        hidden = self.user_encoder.apply({"params": params["user_encoder"]}, batch["history"], train=True,
                                         rngs={"dropout": key})[:, -1]
        user = self.user_head.apply({"params": params["user_head"]}, hidden)
        has_user, has_cooc = batch["history"][:, -1] > 0, batch["cooc"] > 0
        # Rows outside a term's mask can be exactly 0 (empty history, padding item), where the
        # norm inside InfoNCE has a NaN gradient; they get a constant instead.
        terms = {"u2i": losses.info_nce(jnp.where(has_user[:, None], user, 1.0), zq, has_user, c.temperature),
                 "cooc": losses.info_nce(zq, jnp.where(has_cooc[:, None], zq_c, 1.0), has_cooc, c.temperature)}
        align = losses.l_align(terms, {"u2i": c.w_u2i, "cooc": c.w_cooc})
        loss = losses.total_loss(sem, 0.0, align, alpha=0.0, beta=c.beta)
        metrics = {"loss": loss, "l_sem": sem, "l_align": align, "recon": recon, "qloss_item": q.loss,
                   "qerr_item": q.recon_error, "u2i": terms["u2i"], "i2i": terms["cooc"]}
        return loss, (metrics, {"codes": {"item": q.codes}, "residuals": {"item": q.residuals}})

    def encode(self, params, batch, constants):
        z, q = self._quantize(params, batch["target"], constants)
        return q.codes, z, {"item": q.residuals}

    def final_report(self, params, constants, workdir, nearest=None, exported=None) -> dict:
        """Collision numbers of the exported item IDs (the loop's encoding of every item with the
        selected parameters), with the nearest-code collision rate too when the last level is made
        collision-free. Usage and perplexity per level are the loop's (summary "views")."""
        codes = exported["item"]
        out = collision_stats(codes)
        if self.cfg.quantizer.collision_free_last_level:
            out["nearest_collision_rate"] = collision_stats(nearest["item"])["collision_rate"]
            out["moved_to_a_free_code"] = float(np.mean(np.any(codes != nearest["item"], 1)))
        return out

    def finalize_codes(self, params, codes_by_view, residuals_by_view):
        """The loop's hook between encoding and export: the collision-free last level, if configured
        (residuals [N, L or 1, D]: their last entry is the last level's input)."""
        if not self.cfg.quantizer.collision_free_last_level:
            return codes_by_view
        codebook = np.asarray(params["codebooks_item"][-1])
        last = np.asarray(residuals_by_view["item"])[:, -1]
        return {"item": collision_free_last_level(codes_by_view["item"], last, codebook)}

    def write_outputs(self, workdir, codes_by_view, continuous):
        write_item_table(os.path.join(workdir, "item_codes.parquet"), self.export_ids, codes_by_view["item"])
        np.save(os.path.join(workdir, "item_latents.npy"), continuous.astype(np.float32))
