"""Synthetic users with planted latent types, for tests and for checking that tokens find structure.

Each user has a hidden type t. The type drives, each one noisily:
- tabular attributes: `region` (8 values), `device` (4 values) and numeric `age`. Every type has its
  own distribution of each, mixed with a shared one, so no single attribute reveals the type;
- behaviour: items belong to topic clusters and each type prefers a few clusters; most events come
  from the preferred clusters, the rest from the whole (popularity-skewed) catalog. Types also keep
  their own hours of the day, and rate preferred items higher (`value`, 1–5);
- item text: each cluster has its own vocabulary ("short product descriptions"), mixed with filler
  words that all clusters share.
About 3% of users have no events and a few items are never touched. `items.topic` is the planted
cluster of each item (ground truth for checks; a model should read `text`, not `topic`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from u2qt.data.tables import Tables

_REGIONS = ("north", "south", "east", "west", "center", "coast", "mountain", "islands")
_DEVICES = ("android", "ios", "desktop", "tablet")
_FILLER_ADJ = ("new", "classic", "premium", "everyday", "compact", "durable", "popular", "simple")
_FILLER = ("great value", "fast shipping", "gift idea", "best seller", "limited edition",
           "easy to use", "high quality", "top rated")
_SYLLABLES = ("ka", "lo", "mi", "ren", "tu", "sa", "vor", "pe", "xi", "dan", "bru", "fen",
              "gal", "hop", "ji", "qua", "ny", "zo", "tem", "wik")
_START = 1_672_531_200  # 2023-01-01 UTC


def _words(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """n pronounceable made-up words, distinct from each other and from `taken`."""
    out = []
    while len(out) < n:
        w = "".join(rng.choice(_SYLLABLES, size=rng.integers(2, 4)))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def _mix(rng: np.random.Generator, num_types: int, k: int, strength: float) -> np.ndarray:
    """[num_types, k] categorical distributions: strength * type-specific + (1 - strength) * uniform."""
    own = rng.dirichlet(np.full(k, 0.5), size=num_types)
    return strength * own + (1 - strength) / k


def _sample_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One sample from the categorical distribution probs[rows[i]] for every i."""
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random(len(rows))
    out = np.empty(len(rows), np.int64)
    for r in np.unique(rows):  # one vectorized search per distinct distribution (few)
        sel = rows == r
        out[sel] = np.searchsorted(cdf[r], u[sel], side="right")
    return np.minimum(out, probs.shape[1] - 1)


def _items(rng: np.random.Generator, num_items: int, num_clusters: int, untouched_items: int):
    """(items table, item_cluster [I], popularity [I]): clusters, popularity-skewed, some never touched."""
    item_cluster = np.concatenate([np.arange(num_clusters), rng.integers(0, num_clusters, num_items - num_clusters)])
    item_cluster = rng.permutation(item_cluster)[:num_items]
    popularity = rng.zipf(1.6, size=num_items).astype(np.float64).clip(max=50)
    untouched = rng.choice(num_items, size=untouched_items, replace=False)
    popularity[untouched] = 0.0
    taken: set[str] = set()
    vocab = [_words(rng, 10, taken) for _ in range(num_clusters)]
    nouns = _words(rng, num_clusters, taken)
    texts = []
    for c, r in zip(item_cluster, rng.integers(0, 1 << 30, size=num_items)):
        w = np.random.default_rng(r).choice(vocab[c], size=3, replace=False)
        f = np.random.default_rng(r + 1)
        texts.append(f"{f.choice(_FILLER_ADJ)} {w[0]} {nouns[c]} with {w[1]} and {w[2]}. {f.choice(_FILLER)}.")
    items = pd.DataFrame({
        "item_id": np.char.add("i", np.char.zfill(np.arange(num_items).astype(str), 5)).astype(object),
        "text": np.asarray(texts, dtype=object),
        "topic": item_cluster,
    })
    return items, item_cluster, popularity


def _preferences(rng, num_types: int, num_clusters: int, clusters_per_type: int, item_cluster, popularity):
    """(in_pref [T, I] bool, pref_probs [T, I], all_probs [I]): each type picks clusters; within a
    cluster items are chosen by popularity."""
    prefs = np.stack([rng.choice(num_clusters, clusters_per_type, replace=False) for _ in range(num_types)])
    in_pref = np.zeros((num_types, len(item_cluster)), bool)
    for t in range(num_types):
        in_pref[t] = np.isin(item_cluster, prefs[t])
    pref_probs = popularity[None, :] * in_pref
    pref_probs /= pref_probs.sum(axis=1, keepdims=True)
    return in_pref, pref_probs, popularity / popularity.sum()


def _events(rng, user_types, user_ids, item_ids, prefs, mean_events, preferred_share, no_event_share,
            hour_peak: np.ndarray | None, num_types: int) -> pd.DataFrame:
    """Counts, item choices, timestamps and values of every user's events. ``hour_peak`` [T]: each
    type's hour of day (None = drawn here, where ``make_synthetic`` has always drawn it)."""
    in_pref, pref_probs, all_probs = prefs
    num_users = len(user_types)
    counts = np.maximum(1, rng.geometric(1.0 / mean_events, size=num_users)).clip(max=20 * int(mean_events))
    counts[rng.random(num_users) < no_event_share] = 0
    ev_user = np.repeat(np.arange(num_users), counts)
    ev_type = user_types[ev_user]
    from_pref = rng.random(len(ev_user)) < preferred_share
    ev_item = np.where(
        from_pref,
        _sample_rows(rng, pref_probs, ev_type),
        _sample_rows(rng, all_probs[None, :], np.zeros(len(ev_user), int)),
    )
    # Increasing times: a start per user, exponential gaps (mean 2 days), hours around the type's peak.
    start = _START + rng.integers(0, 180 * 86400, size=num_users)
    gaps = rng.exponential(2 * 86400, size=len(ev_user))
    elapsed = np.cumsum(gaps)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    f = np.minimum(first, max(len(elapsed) - 1, 0))  # users without events repeat nothing
    elapsed -= np.repeat(elapsed[f] - gaps[f], counts) if len(elapsed) else 0.0
    day = (start[ev_user] + elapsed.astype(np.int64)) // 86400 * 86400
    hour_peak = rng.uniform(0, 24, size=num_types) if hour_peak is None else hour_peak
    hour = np.mod(hour_peak[ev_type] + rng.normal(0, 2.5, len(ev_user)), 24)
    ts = day + (hour * 3600).astype(np.int64)
    # Sort times within each user (items keep their random order) and break ties by +k seconds.
    ts = ts[np.lexsort((ts, ev_user))] + np.arange(len(ts)) - np.repeat(first, counts)
    value = np.clip(np.round(2.6 + 1.4 * in_pref[ev_type, ev_item] + rng.normal(0, 0.9, len(ev_user))), 1, 5)
    return pd.DataFrame({
        "user_id": user_ids[ev_user],
        "item_id": item_ids[ev_item],
        "timestamp": ts.astype(np.int64),
        "value": value,
    })


def _users(rng, user_types, user_ids, region_mix, device_mix, age_mean, missing_share) -> pd.DataFrame:
    num_users = len(user_types)
    region = _sample_rows(rng, region_mix, user_types)
    device = _sample_rows(rng, device_mix, user_types)
    age = age_mean[user_types] + rng.normal(0, 9, size=num_users)
    age = np.clip(np.round(age), 16, 90)
    region_s = np.asarray(_REGIONS, dtype=object)[region]
    device_s = np.asarray(_DEVICES, dtype=object)[device]
    region_s[rng.random(num_users) < missing_share] = None
    age[rng.random(num_users) < missing_share] = np.nan
    return pd.DataFrame({"user_id": user_ids, "region": region_s, "device": device_s, "age": age})


def make_synthetic(
    num_users: int = 2000,
    num_items: int = 400,
    num_types: int = 8,
    seed: int = 0,
    *,
    num_clusters: int | None = None,
    clusters_per_type: int = 2,
    mean_events: float = 30.0,
    preferred_share: float = 0.8,
    no_event_share: float = 0.03,
    untouched_items: int | None = None,
    missing_share: float = 0.02,
) -> tuple[Tables, np.ndarray]:
    """Returns (tables, user_types[num_users] int). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    num_clusters = num_clusters or 2 * num_types
    untouched_items = max(2, num_items // 100) if untouched_items is None else untouched_items
    user_types = rng.integers(0, num_types, size=num_users)

    # Tabular attributes (each type-level draw right before its use: the realization of every seed
    # stays what it always was).
    region = _sample_rows(rng, _mix(rng, num_types, len(_REGIONS), 0.6), user_types)
    device = _sample_rows(rng, _mix(rng, num_types, len(_DEVICES), 0.5), user_types)
    age = rng.uniform(22, 58, size=num_types)[user_types] + rng.normal(0, 9, size=num_users)
    age = np.clip(np.round(age), 16, 90)
    region_s = np.asarray(_REGIONS, dtype=object)[region]
    device_s = np.asarray(_DEVICES, dtype=object)[device]
    region_s[rng.random(num_users) < missing_share] = None
    age[rng.random(num_users) < missing_share] = np.nan
    users = pd.DataFrame({
        "user_id": np.char.add("u", np.char.zfill(np.arange(num_users).astype(str), 6)).astype(object),
        "region": region_s,
        "device": device_s,
        "age": age,
    })
    items, item_cluster, popularity = _items(rng, num_items, num_clusters, untouched_items)
    prefs = _preferences(rng, num_types, num_clusters, clusters_per_type, item_cluster, popularity)
    events = _events(rng, user_types, users["user_id"].to_numpy(), items["item_id"].to_numpy(), prefs,
                     mean_events, preferred_share, no_event_share, None, num_types)
    return Tables(users=users, items=items, events=events), user_types


class SyntheticUserIds:
    """The ids of streamed synthetic users, ``"u%08d" % i``, computed on demand: a sequence of str
    without a 10 M-string list in memory."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if isinstance(i, (list, np.ndarray)):
            return [self[int(j)] for j in np.asarray(i).reshape(-1)]
        i = int(i)
        if not -self.n <= i < self.n:
            raise IndexError(f"user index {i} is out of range [0, {self.n})")
        return "u%08d" % (i % self.n)

    def __iter__(self):
        return ("u%08d" % i for i in range(self.n))

    def __repr__(self) -> str:
        return f"SyntheticUserIds({self.n:,})"


@dataclasses.dataclass
class SyntheticWorld:
    """What is fixed by the seed in streamed synthetic data: the items with their texts, each
    type's attribute distributions, preferred clusters and hours. Users come chunk by chunk
    (``chunk``), each chunk from its own seed, so no step holds every user."""

    items: pd.DataFrame
    region_mix: np.ndarray
    device_mix: np.ndarray
    age_mean: np.ndarray
    hour_peak: np.ndarray
    prefs: tuple
    seed: int
    num_types: int
    mean_events: float = 30.0
    preferred_share: float = 0.8
    no_event_share: float = 0.03
    missing_share: float = 0.02

    @classmethod
    def make(cls, num_items: int = 400, num_types: int = 8, seed: int = 0, *, clusters_per_type: int = 2,
             **kwargs) -> "SyntheticWorld":
        rng = np.random.default_rng([seed, 0x5717])  # not make_synthetic's stream: a world of its own
        num_clusters = 2 * num_types
        region_mix = _mix(rng, num_types, len(_REGIONS), 0.6)
        device_mix = _mix(rng, num_types, len(_DEVICES), 0.5)
        age_mean = rng.uniform(22, 58, size=num_types)
        hour_peak = rng.uniform(0, 24, size=num_types)
        items, item_cluster, popularity = _items(rng, num_items, num_clusters, max(2, num_items // 100))
        prefs = _preferences(rng, num_types, num_clusters, clusters_per_type, item_cluster, popularity)
        return cls(items, region_mix, device_mix, age_mean, hour_peak, prefs, seed, num_types, **kwargs)

    def chunk(self, first: int, n: int, index: int) -> tuple[Tables, np.ndarray]:
        """Users [first, first + n) (chunk number ``index``): (tables, their planted types)."""
        rng = np.random.default_rng([self.seed, 0x5718, index])
        user_types = rng.integers(0, self.num_types, size=n)
        user_ids = np.asarray(SyntheticUserIds(first + n)[first:first + n], dtype=object)
        users = _users(rng, user_types, user_ids, self.region_mix, self.device_mix, self.age_mean,
                       self.missing_share)
        events = _events(rng, user_types, user_ids, self.items["item_id"].to_numpy(), self.prefs,
                         self.mean_events, self.preferred_share, self.no_event_share, self.hour_peak,
                         self.num_types)
        return Tables(users=users, items=self.items, events=events), user_types


def synthetic_chunks(num_users: int, num_items: int = 400, num_types: int = 8, seed: int = 0, *,
                     chunk_users: int = 100_000):
    """Streamed synthetic users: yields (tables of ``chunk_users`` users, their planted types) in
    user order; deterministic for (seed, chunk_users); the same items in every chunk."""
    world = SyntheticWorld.make(num_items, num_types, seed)
    for index, first in enumerate(range(0, num_users, chunk_users)):
        yield world.chunk(first, min(chunk_users, num_users - first), index)
