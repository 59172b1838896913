"""The sequential-recommendation evaluation protocol (TIGER, LC-Rec, LETTER), one for every model.

Split (`u2qt.data.sequences.leave_one_out`): per user, the last item is the test target, the
second-to-last the validation target, the rest is training data. Users with fewer than 3 items
get no evaluation case: their whole sequence is training data (`evaluated` is False for them).

Cases (`make_eval_cases`): the history is the last `max_history` items before the target (for
"test" it includes the validation item), LEFT-padded with 0 so the most recent item is always
in the last column.

Metrics: full ranking over ALL items 1..I, no sampled negatives. Index 0 (padding) never ranks.
The rank of the target (0 = best) is the number of competing items scoring higher than it;
ties count AGAINST the target by default (`ties="pessimistic"`: a competitor with an equal
score is ranked above the target), so a model that scores everything equally gets rank I - 1,
not 0. `ties="optimistic"` counts only strictly higher scores. NaN scores count as -inf.
Recall@k = mean[rank < k]; NDCG@k = mean[1 / log2(rank + 2) if rank < k else 0] (one relevant
item, so IDCG = 1). Removing the history items from the ranking is OFF by default, as in the
TIGER protocol (repeat purchases stay rankable); `exclude=` / `exclude_history=True` turns it on,
and the target itself is never removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from u2qt.data.sequences import LeaveOneOutSplit
from u2qt.progress import Progress

ScoreFn = Callable[[dict[str, jax.Array]], jax.Array]


@dataclasses.dataclass(frozen=True)
class EvalCases:
    users: np.ndarray    # int32 [B]: row of the user in the split's sequences
    history: np.ndarray  # int32 [B, max_history]: left-padded with 0, most recent item last
    targets: np.ndarray  # int32 [B]: the item to rank, 1..I

    def __len__(self) -> int:
        return len(self.targets)


def make_eval_cases(split: LeaveOneOutSplit, which: str = "valid",
                    max_history: int = 20) -> EvalCases:
    """One case per evaluated user: the target and the `max_history` items before it."""
    if which not in ("valid", "test"):
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
    end = -2 if which == "valid" else -1  # position of the target
    users = np.flatnonzero(split.evaluated).astype(np.int32)
    history = np.zeros((users.size, max_history), dtype=np.int32)
    targets = np.zeros(users.size, dtype=np.int32)
    for row, u in enumerate(users):
        seq = split.sequences[u]
        before = seq[:end][-max_history:] if max_history else seq[:0]
        history[row, max_history - before.size:] = before
        targets[row] = seq[end]
    return EvalCases(users=users, history=history, targets=targets)


@partial(jax.jit, static_argnames="ties")
def target_ranks(scores: jax.Array, targets: jax.Array, exclude: jax.Array | None = None,
                 ties: str = "pessimistic") -> jax.Array:
    """Rank (0 = best) of each target among items 1..I.

    scores: [B, I + 1] (column 0 is padding, ignored); targets: [B] in 1..I;
    exclude: optional int [B, L] item indices removed from the competition (0 entries ignored).
    """
    scores = jnp.asarray(scores, jnp.float32)
    scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    rows = jnp.arange(scores.shape[0])
    target_score = scores[rows, targets][:, None]
    columns = jnp.arange(scores.shape[1])[None, :]
    competes = (columns > 0) & (columns != targets[:, None])
    if exclude is not None:
        competes = competes.at[rows[:, None], exclude].set(False)
    if ties == "pessimistic":
        above = scores >= target_score
    elif ties == "optimistic":
        above = scores > target_score
    else:
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', got {ties!r}")
    return jnp.sum(above & competes, axis=1, dtype=jnp.int32)


def metrics_from_ranks(ranks: np.ndarray | jax.Array, ks: Sequence[int] = (5, 10)) -> dict[str, float]:
    """Recall@k and NDCG@k (one relevant item), averaged over cases."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no evaluation cases")
    hit_gain = 1.0 / np.log2(ranks + 2.0)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"Recall@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, hit_gain, 0.0).mean())
    return out


def full_ranking_metrics(scores: jax.Array, targets: jax.Array, ks: Sequence[int] = (5, 10),
                         exclude: jax.Array | None = None,
                         ties: str = "pessimistic") -> dict[str, float]:
    """Recall@k, NDCG@k of scores [B, I + 1] for targets [B]; for a score function use `evaluate`."""
    targets = np.asarray(targets)
    _check_targets(targets, np.shape(scores)[1] - 1)
    return metrics_from_ranks(target_ranks(scores, targets, exclude, ties=ties), ks)


def evaluate_ranks(score_fn: ScoreFn, cases: EvalCases, batch_size: int = 256,
                   exclude_history: bool = False, ties: str = "pessimistic", log=None,
                   desc: str = "evaluation") -> np.ndarray:
    """Target ranks of every case, scoring `batch_size` cases at a time.

    With `log`, progress goes there: a line every 30 s with the rate and time left, and one at
    the end with the time it took.

    `score_fn({"user": int32 [b], "history": int32 [b, L]}) -> scores [b, I + 1]`. The last batch
    is padded to `batch_size` (repeating its first case) so a jitted `score_fn` compiles once; at
    most batch_size x (I + 1) scores exist at any time.
    """
    n = len(cases)
    if n == 0:
        raise ValueError("no evaluation cases")
    chunks = []
    progress = Progress(n, desc, "cases", log=log, bar=False) if log else None
    for start in range(0, n, batch_size):
        take = np.arange(start, min(start + batch_size, n))
        take = np.concatenate([take, np.full(batch_size - take.size, start)])
        scores = score_fn({"user": jnp.asarray(cases.users[take]),
                           "history": jnp.asarray(cases.history[take])})
        if start == 0:
            _check_targets(cases.targets, scores.shape[1] - 1)
        targets = jnp.asarray(cases.targets[take])
        exclude = jnp.asarray(cases.history[take]) if exclude_history else None
        chunks.append(target_ranks(scores, targets, exclude, ties=ties)[:min(batch_size, n - start)])
        if progress:
            progress.update(int(jax.block_until_ready(chunks[-1]).shape[0]))
    if progress:
        progress.close()
    return np.concatenate(jax.device_get(chunks))


def evaluate(score_fn: ScoreFn, cases: EvalCases, batch_size: int = 256, ks: Sequence[int] = (5, 10),
             exclude_history: bool = False, ties: str = "pessimistic") -> dict[str, float]:
    """Recall@k and NDCG@k over all cases, batched (see `evaluate_ranks`)."""
    return metrics_from_ranks(evaluate_ranks(score_fn, cases, batch_size, exclude_history, ties), ks)


def item_counts(sequences: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """Interactions per item index, int64 [I + 1] (index 0 counts nothing); e.g. of `split.train`."""
    counts = np.zeros(num_items + 1, dtype=np.int64)
    for seq in sequences:
        np.add.at(counts, np.asarray(seq, dtype=np.int64), 1)
    counts[0] = 0
    return counts


def bucket_by_popularity(counts: np.ndarray, targets: np.ndarray, n_buckets: int) -> np.ndarray:
    """Popularity bucket of each target: 0 = head ... n_buckets - 1 = tail.

    Items are ordered by training count (most popular first, ties by index) and cut into
    `n_buckets` groups holding equal shares of the training interactions: an item falls in
    bucket floor(n_buckets x (interactions of the items before it) / total). Items never seen in
    training are in the last bucket.
    """
    counts = np.asarray(counts, dtype=np.float64).copy()
    counts[0] = 0.0
    order = np.argsort(-counts[1:], kind="stable") + 1
    before = np.cumsum(counts[order]) - counts[order]
    share = before / max(counts.sum(), 1.0)
    share[counts[order] == 0] = 1.0
    item_bucket = np.zeros(counts.size, dtype=np.int32)
    item_bucket[order] = np.minimum((share * n_buckets).astype(np.int32), n_buckets - 1)
    return item_bucket[np.asarray(targets)]


def metrics_by_bucket(ranks: np.ndarray, buckets: np.ndarray, n_buckets: int,
                      ks: Sequence[int] = (5, 10)) -> list[dict[str, float]]:
    """`metrics_from_ranks` per bucket, each with its number of cases ("cases"; NaN metrics if 0)."""
    ranks, buckets = np.asarray(ranks), np.asarray(buckets)
    out = []
    for b in range(n_buckets):
        mine = ranks[buckets == b]
        row = (metrics_from_ranks(mine, ks) if mine.size else
               {f"{name}@{k}": float("nan") for k in ks for name in ("Recall", "NDCG")})
        out.append({"cases": int(mine.size), **row})
    return out


def _check_targets(targets: np.ndarray, num_items: int) -> None:
    if targets.size and (targets.min() < 1 or targets.max() > num_items):
        raise ValueError(f"targets must lie in 1..{num_items} (0 is padding), "
                         f"got {targets.min()}..{targets.max()}")
