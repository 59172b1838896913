"""Downstream value of user tokens: the same small head on three inputs.

For a trained tokenizer run (its workdir), each task is scored from
  tokens      the user's codes, each view's turned back into its vector through the codebooks
              (Σ_l C_l[code_l], the serving path; per user still only the codes are stored),
  continuous  the pre-quantization representation the tokens were made from,
  raw         the raw inputs (tabular one-hot + numeric, bag of history items, mean item text).
Tasks (MovieLens-1M, or any data with the same columns):
  next_item   each held-out event's item, full ranking over all items (history excluded),
              Recall@10 / NDCG@10 over all held-out events;
  genres      the genres of the user's held-out items (multi-label), macro AUC;
  gender      an attribute the tokenizer never saw (its run must exclude it), AUC.
No target is an input of the model whose output predicts it: held-out events are never model
inputs, and the attribute task refuses a run that saw the attribute. Heads are cross-fitted
(`cross_fit`): five heads, each scoring the fifth of the users it never saw, so every user with
a target is a test case (≈ 3,000 on MovieLens-1M, ≈ 15,000 held-out events) instead of a fifth.

    python -m u2qt.eval.downstream --workdir runs/ml1m --attribute-workdir runs/ml1m_nogender
    python -m u2qt.eval.downstream --workdir runs/mine --attribute COLUMN

With ``--attribute COLUMN`` and no ``--attribute-workdir``, the attribute task uses the run
``<workdir>_without_<COLUMN>`` and, if it has not finished, trains it first: the same config
(``<workdir>/config.json``) with COLUMN added to ``data.exclude_user_columns``, through
``train.py`` (rerunning resumes it). Any binary user column of any data set works.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pandas as pd

from u2qt import config as config_lib
from u2qt import files
from u2qt.errors import ConfigError, DataError
from u2qt.data.load import load_data
from u2qt.data.text import item_text_table
from u2qt.eval.ranking import metrics_from_ranks, target_ranks
from u2qt.quant.residual import decode_codes
from u2qt.quant.semantic_ids import FILENAME, SemanticIds


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
    """Deterministic per-user fold 0..9 from a hash of the id."""
    return np.array([zlib.crc32(u.encode()) % 10 for u in user_ids])


CROSS_FITS = 5  # folds 0..9 in pairs: each pair is the test set once, the next pair validates


def _softmax_loss(logits, y):
    """Cross-entropy of one target [B] or the mean over several [B, H] (0 = padding)."""
    if y.ndim == 1:
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    logp = jax.nn.log_softmax(logits)
    picked = jnp.take_along_axis(logp, y, axis=1)
    valid = (y > 0).astype(logp.dtype)
    return -(picked * valid).sum() / jnp.maximum(valid.sum(), 1.0)


PREDICT_CHUNK = 512  # rows per prediction call: every call one shape, so one compiled program


@functools.lru_cache(maxsize=None)
def _head_programs(out_dim: int, loss_kind: str, lr: float):
    """(head, optimizer, jitted step, jitted predict) of one kind of head, built once per process:
    a head trained per fold (``cross_fit``) and per feature set reuses the compiled programs
    instead of tracing and compiling its own (60 heads of the workflow test compiled ~250 times)."""
    head = Head(out_dim)
    tx = optax.adamw(lr, weight_decay=1e-4)

    def loss_fn(p, xb, yb, k):
        logits = head.apply(p, xb, deterministic=False, rngs={"dropout": k})
        if loss_kind == "softmax":
            return _softmax_loss(logits, yb)
        return optax.sigmoid_binary_cross_entropy(logits, yb.reshape(logits.shape)).mean()

    @jax.jit
    def step(p, o, xb, yb, k):
        g = jax.grad(loss_fn)(p, xb, yb, k)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    return head, tx, step, jax.jit(lambda p, xb: head.apply(p, xb, deterministic=True))


def _predict(predict, params, x: np.ndarray) -> np.ndarray:
    """``predict`` over ``x`` in chunks of PREDICT_CHUNK rows (the last one padded)."""
    n = len(x)
    pad = np.zeros((-n % PREDICT_CHUNK,) + x.shape[1:], x.dtype)
    xs = np.concatenate([x, pad]) if len(pad) else x
    out = [np.asarray(predict(params, xs[i: i + PREDICT_CHUNK])) for i in range(0, len(xs), PREDICT_CHUNK)]
    return np.concatenate(out)[:n]


def train_head(x: np.ndarray, y: np.ndarray, train: np.ndarray, valid: np.ndarray, test: np.ndarray,
               loss_kind: str, score, out_dim: int, *, epochs: int = 40, batch_size: int = 256,
               lr: float = 1e-3, seed: int = 0):
    """Trains the head on the `train` rows, keeps the epoch with the best score on `valid`, and
    returns (validation score, predictions for the `test` rows)."""
    # Centre each feature, scale the whole input by one number: per-feature scaling would blow up
    # rare one-hot codes and rare items (tiny std) into noise, unfairly to sparse inputs.
    mean = x[train].mean(0)
    x = ((x - mean) / (np.sqrt(np.mean((x[train] - mean) ** 2)) + 1e-6)).astype(np.float32)
    head, tx, step, predict = _head_programs(out_dim, loss_kind, lr)
    key = jax.random.key(seed)
    params = head.init(key, x[:1], deterministic=True)
    opt = tx.init(params)
    rows = np.flatnonzero(train)
    rng = np.random.default_rng(seed)
    best = (-np.inf, params)
    for epoch in range(epochs):
        rng.shuffle(rows)
        for start in range(0, len(rows) - batch_size + 1 if len(rows) >= batch_size else 1, batch_size):
            idx = rows[start: start + batch_size]
            params, opt = step(params, opt, x[idx], y[idx], jax.random.fold_in(key, epoch * 10_000 + start))
        val = score(_predict(predict, params, x[valid]), valid)
        if val > best[0]:
            best = (val, params)
    return best[0], _predict(predict, best[1], x[test])


def cross_fit(x: np.ndarray, y: np.ndarray, fold: np.ndarray, loss_kind: str, score, out_dim: int,
              epochs: int) -> np.ndarray:
    """Out-of-fold predictions for every row: CROSS_FITS heads, each tested on one pair of folds,
    validated (epoch selection) on the next pair and trained on the other six. Every user is then
    scored by a head that never saw it, and the test set is all users instead of a fifth."""
    group = fold // 2
    out = None
    for g in range(CROSS_FITS):
        test, valid = group == g, group == (g + 1) % CROSS_FITS
        _, pred = train_head(x, y, ~(test | valid), valid, test, loss_kind, score, out_dim,
                             epochs=epochs, seed=g)
        if out is None:
            out = np.zeros((len(x),) + pred.shape[1:], np.float32)
        out[test] = pred
    return out


# ----------------------------------------------------------------------------- inputs
def load_run(workdir: str):
    cfg = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, "config.json"))))
    data = load_data(cfg.data)
    tokens = SemanticIds.read(os.path.join(workdir, FILENAME))
    if tokens.ids != data.spec.user_ids:
        raise ValueError(f"{workdir}: the token table's users differ from the data's; was the data changed?")
    continuous = np.load(os.path.join(workdir, "representations.npy"))
    codebooks = np.load(os.path.join(workdir, "codebooks.npz"))
    return cfg, data, tokens, continuous, codebooks


def token_features(tokens: SemanticIds, codebooks) -> np.ndarray:
    """Each view's codes turned back into its vector, ẑ = Σ_l C_l[code_l] (`decode_codes`, the
    serving path), views concatenated: what a model that reads the tokens gets from the
    tokenizer's (small, shared) codebooks. Per user this is the codes, nothing else."""
    parts = [np.asarray(decode_codes(jnp.asarray(codes), jnp.asarray(codebooks[view])))
             for view, codes in tokens.codes.items()]
    return np.concatenate(parts, 1).astype(np.float32)


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
def future_ranks(logits: np.ndarray, future: np.ndarray, history: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """One case per held-out event (future [B, H], 0 = none): its rank among all items except
    the user's input history."""
    rows, cols = np.nonzero(future > 0)
    out = []
    for i in range(0, len(rows), chunk):
        r, c = rows[i:i + chunk], cols[i:i + chunk]
        out.append(np.asarray(target_ranks(jnp.asarray(logits[r]), jnp.asarray(future[r, c]), jnp.asarray(history[r]))))
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


def next_item_task(inputs: dict, data, fold, epochs: int) -> dict:
    """Every held-out event of every user with one, ranked over all items (history excluded)."""
    ex = data.examples
    has = ex["future_length"] > 0
    future, history = ex["future"][has], ex["items"][has]
    results = {}
    for name, x in inputs.items():
        def score(logits, sel):
            return metrics_from_ranks(future_ranks(logits, future[sel], history[sel]), ks=(10,))["NDCG@10"]
        logits = cross_fit(x[has], future, fold[has], "softmax", score, data.spec.num_items + 1, epochs)
        results[name] = metrics_from_ranks(future_ranks(logits, future, history), ks=(10,))
    return results


def genre_task(inputs: dict, data, fold, epochs: int) -> dict:
    """The genres of each user's held-out items (multi-label), macro AUC."""
    ex, items = data.examples, data.tables.items
    if "genres" not in items.columns:
        return {"skipped": "the items table has no 'genres' column (pipe-separated names, e.g. Drama|Comedy)"}
    genre_lists = items["genres"].fillna("").astype(str).str.split("|")
    names = sorted({g for gs in genre_lists for g in gs if g})
    item_genres = np.zeros((len(items) + 1, len(names)), np.float32)
    for i, gs in enumerate(genre_lists):
        for g in gs:
            if g:
                item_genres[i + 1, names.index(g)] = 1.0
    has = ex["future_length"] > 0
    labels = (item_genres[ex["future"][has]].max(1) > 0).astype(np.float32)
    results = {}
    for name, x in inputs.items():
        score = lambda logits, sel: macro_auc(labels[sel], logits)
        logits = cross_fit(x[has], labels, fold[has], "sigmoid", score, len(names), epochs)
        results[name] = {"macro_AUC": macro_auc(labels, logits)}
    return results


def attribute_task(inputs: dict, data, fold, attribute: str, epochs: int) -> dict:
    values = data.tables.users[attribute].astype(str).to_numpy()
    classes = sorted(set(values))
    if len(classes) != 2:
        raise DataError(f"the attribute task needs a binary attribute; {attribute!r} has {len(classes)} values")
    y = (values == classes[1]).astype(np.float32)
    results = {}
    for name, x in inputs.items():
        score = lambda logits, sel: auc(y[sel], logits[:, 0])
        logits = cross_fit(x, y, fold, "sigmoid", score, 1, epochs)
        results[name] = {"AUC": auc(y, logits[:, 0])}
    return results


def _inputs(workdir: str, cfg, data, tokens, continuous, codebooks) -> dict:
    item_text = item_text_table(data.spec.item_texts, cfg.data.cache_dir or os.path.join(workdir, "cache"))
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
        raise ConfigError(f"{workdir}: its tokenizer saw {attribute!r} (data.exclude_user_columns="
                         f"{tuple(cfg.data.exclude_user_columns)}); train one without it to predict it")
    inputs = _inputs(workdir, cfg, data, tokens, continuous, codebooks)
    return {attribute: attribute_task(inputs, data, user_split(data.spec.user_ids), attribute, epochs)}


def evaluate_run(workdir: str | None, attribute_workdir: str | None = None, attribute: str = "gender",
                 epochs: int = 40) -> dict:
    """The behaviour tasks of `workdir` and the attribute task of `attribute_workdir` (either may
    be None; the bytes per user come from whichever run is given first)."""
    if workdir is None and attribute_workdir is None:
        raise ConfigError("give a tokenizer run for the behaviour tasks (--workdir), the attribute task "
                          "(--attribute-workdir), or both")
    out = evaluate_behaviour(workdir, epochs) if workdir else {}
    if attribute_workdir:
        out.update(evaluate_attribute(attribute_workdir, attribute, epochs))
    elif workdir:
        out["attribute"] = {"skipped": "no --attribute COLUMN given (a binary user column; the tokenizer is trained "
                                       "again without it)"}
    summary = json.load(open(os.path.join(workdir or attribute_workdir, "summary.json")))
    out["bytes_per_user"] = {"tokens": summary["bytes_per_row_tokens"], "continuous": summary["bytes_per_row_float32"]}
    return out


def format_table(results: dict) -> str:
    lines = ["| task | metric | tokens | continuous | raw | tokens / continuous |", "|---|---|---|---|---|---|"]
    skipped = []
    for task, by_input in results.items():
        if task == "bytes_per_user" or not by_input:
            continue
        if "skipped" in by_input:
            skipped.append(f"{task}: skipped, {by_input['skipped']}")
            continue
        for metric in by_input["tokens"]:
            t, c, r = (by_input[k][metric] for k in ("tokens", "continuous", "raw"))
            lines.append(f"| {task} | {metric} | {t:.4f} | {c:.4f} | {r:.4f} | {t / c:.3f} |")
    lines += [""] + skipped if skipped else []
    b = results["bytes_per_user"]
    lines.append(f"\nbytes per user: tokens {b['tokens']:.1f}, continuous float32 {b['continuous']} "
                 f"({b['continuous'] / b['tokens']:.0f}x)")
    return "\n".join(lines)


def train_without(workdir: str, attribute: str, out: str) -> None:
    """Trains (or resumes, or finds finished) the tokenizer of ``workdir``'s config without
    ``attribute`` into ``out``, through ``train.py`` in a child process."""
    if os.path.exists(os.path.join(out, "summary.json")):
        print(f"attribute task: using the finished run {out} (trained without {attribute!r})", flush=True)
        return
    config = os.path.join(workdir, "config.json")
    if not os.path.isfile(config):
        raise ConfigError(f"{workdir} has no config.json: not a finished tokenizer run")
    saved = json.load(open(config))
    if saved.get("task") != "user_tokenizer":
        raise ConfigError(f"{workdir}: the attribute task needs a user tokenizer run, not task {saved.get('task')!r}")
    excluded = list(saved.get("data", {}).get("exclude_user_columns", [])) + [attribute]
    command = config_lib.train_command(config, out, {"data.exclude_user_columns": ",".join(excluded)})
    print(f"attribute task: training the tokenizer again without {attribute!r} (the attribute task needs one "
          f"that never saw it):\n  {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command)
    if done.returncode:
        raise ConfigError(f"training the tokenizer without {attribute!r} into {out} failed (exit status "
                          f"{done.returncode}; its message is above); rerunning this command resumes it")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="a finished tokenizer run: next item and genres")
    parser.add_argument("--attribute-workdir", default=None, help="a run trained without --attribute")
    parser.add_argument("--attribute", default=None,
                        help="a binary user column to predict (default with --attribute-workdir: the one it excluded)")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    if not (args.workdir or args.attribute_workdir):
        parser.error("give --workdir, --attribute-workdir or both")
    if args.attribute and not args.attribute_workdir:
        if not args.workdir:
            parser.error("--attribute without --attribute-workdir needs --workdir (the run to train again without it)")
        args.attribute_workdir = f"{args.workdir.rstrip(os.sep)}_without_{args.attribute}"
        train_without(args.workdir, args.attribute, args.attribute_workdir)
    if args.attribute_workdir and not args.attribute:
        excluded = json.load(open(os.path.join(args.attribute_workdir, "config.json")))["data"].get(
            "exclude_user_columns", [])
        if len(excluded) != 1:
            parser.error(f"{args.attribute_workdir} excluded {excluded}: name the one to predict with --attribute")
        args.attribute = excluded[0]
    results = evaluate_run(args.workdir, args.attribute_workdir, args.attribute, args.epochs)
    for run in {args.workdir, args.attribute_workdir} - {None}:
        path = os.path.join(run, "downstream.json")
        merged = json.load(open(path)) if os.path.exists(path) else {}
        merged.update(results)  # a later call with one task keeps the other's results
        files.write_json(path, merged)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    from u2qt.errors import cli_exit
    raise SystemExit(cli_exit(main))
