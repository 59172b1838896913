"""Downstream value of user tokens: the same small head on three inputs.

For a trained tokenizer run (its workdir), each task is scored from
  tokens      the user's codes (one-hot per view and level),
  continuous  the pre-quantization representation the tokens were made from,
  raw         the raw inputs (tabular one-hot + numeric, bag of history items, mean item text).
Tasks (MovieLens-1M, or any data with the same columns):
  next_item   the first held-out event's item, full ranking over all items (history excluded),
              Recall@10 / NDCG@10;
  genres      the genres of the user's held-out items (multi-label), macro AUC;
  gender      an attribute the tokenizer never saw (its run must exclude it), AUC.
No target is an input of the model whose output predicts it: held-out events are never model
inputs, and the attribute task refuses a run that saw the attribute.

    python -m u2qt.eval.downstream --workdir runs/ml1m --attribute-workdir runs/ml1m_nogender
"""
from __future__ import annotations

import argparse
import json
import os
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pandas as pd

from u2qt.data import sources
from u2qt.eval.ranking import metrics_from_ranks, target_ranks


# ----------------------------------------------------------------------------- metrics
def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties averaged); NaN if one class is absent."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def macro_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    values = [auc(labels[:, j], scores[:, j]) for j in range(labels.shape[1])]
    return float(np.nanmean(values))


# ----------------------------------------------------------------------------- the head
class Head(nn.Module):
    """The same small head for every input: an MLP with one hidden layer."""
    out_dim: int
    hidden: int = 256
    dropout: float = 0.3

    @nn.compact
    def __call__(self, x, deterministic: bool):
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        x = nn.gelu(nn.Dense(self.hidden)(x))
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        return nn.Dense(self.out_dim)(x)


def user_split(user_ids: list[str]) -> np.ndarray:
    """Deterministic per-user fold: 0..9 from a hash of the id (test = 0-1, valid = 2, train = rest)."""
    return np.array([zlib.crc32(u.encode()) % 10 for u in user_ids])


def train_head(x: np.ndarray, y: np.ndarray, fold: np.ndarray, loss_kind: str, score, *, epochs: int = 40,
               batch_size: int = 256, lr: float = 1e-3, seed: int = 0):
    """Trains the head on fold ≥ 3, picks the epoch with the best validation score (fold 2), and
    returns (validation score, test predictions for fold ≤ 1)."""
    train, valid, test = fold >= 3, fold == 2, fold <= 1
    # Centre each feature, scale the whole input by one number: per-feature scaling would blow up
    # rare one-hot codes and rare items (tiny std) into noise, unfairly to sparse inputs.
    mean = x[train].mean(0)
    x = ((x - mean) / (np.sqrt(np.mean((x[train] - mean) ** 2)) + 1e-6)).astype(np.float32)
    out_dim = int(y.max()) + 1 if loss_kind == "softmax" else (y.shape[1] if y.ndim == 2 else 1)
    head = Head(out_dim)
    key = jax.random.key(seed)
    params = head.init(key, x[:1], deterministic=True)
    tx = optax.adamw(lr, weight_decay=1e-4)
    opt = tx.init(params)

    def loss_fn(p, xb, yb, k):
        logits = head.apply(p, xb, deterministic=False, rngs={"dropout": k})
        if loss_kind == "softmax":
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        yb = yb.reshape(logits.shape)
        return optax.sigmoid_binary_cross_entropy(logits, yb).mean()

    @jax.jit
    def step(p, o, xb, yb, k):
        g = jax.grad(loss_fn)(p, xb, yb, k)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    predict = jax.jit(lambda p, xb: head.apply(p, xb, deterministic=True))
    rows = np.flatnonzero(train)
    rng = np.random.default_rng(seed)
    best = (-np.inf, params)
    for epoch in range(epochs):
        rng.shuffle(rows)
        for start in range(0, len(rows) - batch_size + 1 if len(rows) >= batch_size else 1, batch_size):
            idx = rows[start: start + batch_size]
            params, opt = step(params, opt, x[idx], y[idx], jax.random.fold_in(key, epoch * 10_000 + start))
        val = score(np.asarray(predict(params, x[valid])), valid)
        if val > best[0]:
            best = (val, params)
    return best[0], np.asarray(predict(best[1], x[test]))


# ----------------------------------------------------------------------------- inputs
def load_run(workdir: str):
    cfg = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, "config.json"))))
    data = sources.load_data(cfg.data)
    tokens = pd.read_parquet(os.path.join(workdir, "user_tokens.parquet"))
    if tokens["user_id"].astype(str).tolist() != data.spec.user_ids:
        raise ValueError(f"{workdir}: the token table's users differ from the data's; was the data changed?")
    continuous = np.load(os.path.join(workdir, "user_representations.npy"))
    codebooks = np.load(os.path.join(workdir, "codebooks.npz"))
    return cfg, data, tokens, continuous, codebooks


def token_features(tokens: pd.DataFrame, codebooks) -> np.ndarray:
    parts = []
    for col in tokens.columns:
        if col == "user_id":
            continue
        view = col.rsplit("_", 1)[0]
        parts.append(np.eye(codebooks[view].shape[1], dtype=np.float32)[tokens[col].to_numpy()])
    return np.concatenate(parts, 1)


def raw_features(data, item_text: np.ndarray) -> np.ndarray:
    ex, spec = data.examples, data.spec
    parts = [np.eye(size, dtype=np.float32)[ex["cat"][:, f]] for f, size in enumerate(spec.cat_sizes)]
    parts += [ex["num"], ex["num_mask"]]
    bag = np.zeros((len(ex["items"]), spec.num_items + 1), np.float32)
    rows = np.repeat(np.arange(len(ex["items"])), ex["items"].shape[1])
    bag[rows, ex["items"].reshape(-1)] = 1.0
    bag[:, 0] = 0.0
    length = np.maximum(ex["length"], 1)[:, None].astype(np.float32)
    parts.append(bag / np.sqrt(length))
    parts.append(item_text[ex["items"]].sum(1) / length)
    return np.concatenate(parts, 1)


# ----------------------------------------------------------------------------- tasks
def next_item_task(inputs: dict, data, fold, epochs: int) -> dict:
    ex = data.examples
    has = ex["future_length"] > 0
    target = ex["future"][:, 0]
    results = {}
    for name, x in inputs.items():
        def score(logits, sel):
            ranks = target_ranks(jnp.asarray(logits), jnp.asarray(target[has][sel]), jnp.asarray(ex["items"][has][sel]))
            return metrics_from_ranks(np.asarray(ranks), ks=(10,))["NDCG@10"]
        _, test_logits = train_head(x[has], target[has], fold[has], "softmax", score, epochs=epochs)
        test = fold[has] <= 1
        ranks = target_ranks(jnp.asarray(test_logits), jnp.asarray(target[has][test]), jnp.asarray(ex["items"][has][test]))
        results[name] = metrics_from_ranks(np.asarray(ranks), ks=(10,))
    return results


def genre_task(inputs: dict, data, fold, epochs: int) -> dict:
    ex, items = data.examples, data.tables.items
    if "genres" not in items.columns:
        return {}
    genre_lists = items["genres"].fillna("").astype(str).str.split("|")
    names = sorted({g for gs in genre_lists for g in gs if g})
    item_genres = np.zeros((len(items) + 1, len(names)), np.float32)
    for i, gs in enumerate(genre_lists):
        for g in gs:
            if g:
                item_genres[i + 1, names.index(g)] = 1.0
    has = ex["future_length"] > 0
    labels = (item_genres[ex["future"]].max(1) > 0).astype(np.float32)
    results = {}
    for name, x in inputs.items():
        score = lambda logits, sel: macro_auc(labels[has][sel], logits)
        _, test_logits = train_head(x[has], labels[has], fold[has], "sigmoid", score, epochs=epochs)
        results[name] = {"macro_AUC": macro_auc(labels[has][fold[has] <= 1], test_logits)}
    return results


def attribute_task(inputs: dict, data, fold, attribute: str, epochs: int) -> dict:
    values = data.tables.users[attribute].astype(str).to_numpy()
    classes = sorted(set(values))
    if len(classes) != 2:
        raise ValueError(f"attribute task needs a binary attribute; {attribute!r} has {len(classes)} values")
    y = (values == classes[1]).astype(np.float32)
    results = {}
    for name, x in inputs.items():
        score = lambda logits, sel: auc(y[sel], logits[:, 0])
        _, test_logits = train_head(x, y, fold, "sigmoid", score, epochs=epochs)
        results[name] = {"AUC": auc(y[fold <= 1], test_logits[:, 0])}
    return results


def _inputs(workdir: str, cfg, data, tokens, continuous, codebooks) -> dict:
    item_text = sources.item_text_table(data.spec, cfg.data.cache_dir or os.path.join(workdir, "cache"))
    return {"tokens": token_features(tokens, codebooks), "continuous": continuous, "raw": raw_features(data, item_text)}


def evaluate_behaviour(workdir: str, epochs: int = 40) -> dict:
    """next_item and genres from one tokenizer run."""
    cfg, data, tokens, continuous, codebooks = load_run(workdir)
    inputs = _inputs(workdir, cfg, data, tokens, continuous, codebooks)
    fold = user_split(data.spec.user_ids)
    return {"next_item": next_item_task(inputs, data, fold, epochs), "genres": genre_task(inputs, data, fold, epochs)}


def evaluate_attribute(workdir: str, attribute: str = "gender", epochs: int = 40) -> dict:
    """An attribute from a run whose tokenizer never saw it (refuses any other run)."""
    cfg, data, tokens, continuous, codebooks = load_run(workdir)
    if attribute not in tuple(cfg.data.exclude_user_columns):
        raise ValueError(f"{workdir}: its tokenizer saw {attribute!r} (data.exclude_user_columns="
                         f"{tuple(cfg.data.exclude_user_columns)}); train one without it to predict it")
    inputs = _inputs(workdir, cfg, data, tokens, continuous, codebooks)
    return {attribute: attribute_task(inputs, data, user_split(data.spec.user_ids), attribute, epochs)}


def evaluate_run(workdir: str, attribute_workdir: str | None = None, attribute: str = "gender",
                 epochs: int = 40) -> dict:
    out = evaluate_behaviour(workdir, epochs)
    if attribute_workdir:
        out.update(evaluate_attribute(attribute_workdir, attribute, epochs))
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    out["bytes_per_user"] = {"tokens": summary["bytes_per_user_tokens"], "continuous": summary["bytes_per_user_float32"]}
    return out


def format_table(results: dict) -> str:
    lines = ["| task | metric | tokens | continuous | raw | tokens / continuous |", "|---|---|---|---|---|---|"]
    for task, by_input in results.items():
        if task == "bytes_per_user" or not by_input:
            continue
        for metric in by_input["tokens"]:
            t, c, r = (by_input[k][metric] for k in ("tokens", "continuous", "raw"))
            lines.append(f"| {task} | {metric} | {t:.4f} | {c:.4f} | {r:.4f} | {t / c:.3f} |")
    b = results["bytes_per_user"]
    lines.append(f"\nbytes per user: tokens {b['tokens']:.1f}, continuous float32 {b['continuous']} "
                 f"({b['continuous'] / b['tokens']:.0f}x)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a finished tokenizer run")
    parser.add_argument("--attribute-workdir", default=None, help="a run trained without --attribute")
    parser.add_argument("--attribute", default="gender")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    results = evaluate_run(args.workdir, args.attribute_workdir, args.attribute, args.epochs)
    with open(os.path.join(args.workdir, "downstream.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
