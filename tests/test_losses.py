"""u2qt.losses: every term against a plain numpy reference, masks and the DAS composition."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from u2qt import losses


def _lse(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- item softmax
def _item_case(seed=0, b=4, items=9, d=5, t=3):
    rng = np.random.default_rng(seed)
    query = rng.standard_normal((b, d)).astype(np.float32)
    table = rng.standard_normal((items + 1, d)).astype(np.float32)
    targets = rng.integers(1, items + 1, (b, t)).astype(np.int32)
    mask = np.ones((b, t), np.float32)
    return query, table, targets, mask


def _item_softmax_numpy(query, table, targets, mask):
    logits = query.astype(np.float64) @ table[1:].astype(np.float64).T  # items 1..I only
    log_z = _lse(logits)
    out = []
    for b in range(len(query)):
        nll = [log_z[b] - logits[b, targets[b, j] - 1] for j in range(targets.shape[1]) if mask[b, j]]
        out.append(np.mean(nll) if nll else 0.0)
    return np.array(out)


def test_item_softmax_full_matches_numpy():
    query, table, targets, mask = _item_case()
    mask[1, 2] = 0
    targets[1, 2] = 0  # a padded target slot
    mask[3] = 0  # a row with no targets
    got = losses.item_softmax_loss(jnp.asarray(query), jnp.asarray(table), jnp.asarray(targets), jnp.asarray(mask))
    assert got.shape == (4,)
    np.testing.assert_allclose(np.asarray(got), _item_softmax_numpy(query, table, targets, mask), rtol=1e-5)
    assert float(got[3]) == 0.0


def test_item_softmax_padding_row_is_never_a_candidate():
    query, table, targets, mask = _item_case(1)
    base = losses.item_softmax_loss(jnp.asarray(query), jnp.asarray(table), jnp.asarray(targets), jnp.asarray(mask))
    # A padding row aligned with every query would dominate the softmax if it were a candidate.
    table[0] = 100 * query.mean(0)
    for num_sampled, key in ((0, None), (50, jax.random.key(0))):
        got = losses.item_softmax_loss(jnp.asarray(query), jnp.asarray(table), jnp.asarray(targets),
                                       jnp.asarray(mask), key, num_sampled)
        ref = losses.item_softmax_loss(jnp.asarray(query), jnp.asarray(np.where(np.arange(len(table))[:, None] == 0,
                                                                               0.0, table)),
                                       jnp.asarray(targets), jnp.asarray(mask), key, num_sampled)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6)
        assert np.all(np.asarray(got) < 50)
    np.testing.assert_allclose(
        np.asarray(losses.item_softmax_loss(jnp.asarray(query), jnp.asarray(table), jnp.asarray(targets),
                                            jnp.asarray(mask))), np.asarray(base), rtol=1e-6)


def test_item_softmax_sampled_is_finite_and_falls_as_target_score_rises():
    query, table, targets, mask = _item_case(2, b=3, items=30, t=1)
    mask[2] = 0
    key = jax.random.key(3)
    previous = None
    for boost in (0.0, 1.0, 2.0, 4.0):
        boosted = table.copy()
        for b in range(2):
            boosted[targets[b, 0]] += boost * query[b] / np.linalg.norm(query[b])
        got = np.asarray(losses.item_softmax_loss(jnp.asarray(query), jnp.asarray(boosted), jnp.asarray(targets),
                                                  jnp.asarray(mask), key, 8))
        assert np.all(np.isfinite(got)) and np.all(got[:2] >= 0) and got[2] == 0.0
        if previous is not None:
            assert np.all(got[:2] < previous[:2]), (boost, got, previous)
        previous = got


def test_item_softmax_sampled_uses_the_key():
    query, table, targets, mask = _item_case(4, items=40)
    args = (jnp.asarray(query), jnp.asarray(table), jnp.asarray(targets), jnp.asarray(mask))
    a = losses.item_softmax_loss(*args, jax.random.key(0), 5)
    b = losses.item_softmax_loss(*args, jax.random.key(0), 5)
    c = losses.item_softmax_loss(*args, jax.random.key(1), 5)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_l_cf_averages_only_rows_with_targets():
    query, table, targets, mask = _item_case(5)
    mask[1] = 0  # no targets
    row_mask = np.array([1, 1, 1, 0], bool)  # row 3 is padding
    per_row = _item_softmax_numpy(query, table, targets, mask)
    got = losses.l_cf(jnp.asarray(query), jnp.asarray(table), jnp.asarray(targets), jnp.asarray(mask),
                      jnp.asarray(row_mask))
    np.testing.assert_allclose(float(got), per_row[[0, 2]].mean(), rtol=1e-5)


# ----------------------------------------------------------------------------- InfoNCE
def _info_nce_numpy(anchor, positive, mask, temperature):
    a, p = _normalize(anchor.astype(np.float64)), _normalize(positive.astype(np.float64))
    v = np.flatnonzero(mask)
    logits = (a[v] @ p[v].T) / temperature
    diag = np.diag(logits)
    per_row = 0.5 * ((_lse(logits, 1) - diag) + (_lse(logits, 0) - diag))
    return per_row.mean()


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(6)
    anchor, positive = rng.standard_normal((2, 5, 4)).astype(np.float32)
    got = losses.info_nce(jnp.asarray(anchor), jnp.asarray(positive), jnp.ones(5), 0.2)
    np.testing.assert_allclose(float(got), _info_nce_numpy(anchor, positive, np.ones(5), 0.2), rtol=1e-5)


def test_info_nce_masked_rows_are_neither_anchors_nor_candidates():
    rng = np.random.default_rng(7)
    anchor, positive = rng.standard_normal((2, 6, 4)).astype(np.float32)
    mask = np.array([1, 0, 1, 1, 0, 1], np.float32)
    got = float(losses.info_nce(jnp.asarray(anchor), jnp.asarray(positive), jnp.asarray(mask), 0.5))
    np.testing.assert_allclose(got, _info_nce_numpy(anchor, positive, mask, 0.5), rtol=1e-5)
    # Whatever sits in the masked rows changes nothing.
    anchor[mask == 0], positive[mask == 0] = anchor[0], positive[0]
    again = float(losses.info_nce(jnp.asarray(anchor), jnp.asarray(positive), jnp.asarray(mask), 0.5))
    np.testing.assert_allclose(again, got, rtol=1e-6)
    assert float(losses.info_nce(jnp.asarray(anchor), jnp.asarray(positive), jnp.zeros(6), 0.5)) == 0.0


def test_info_nce_prefers_matching_pairs():
    rng = np.random.default_rng(8)
    anchor = rng.standard_normal((4, 6)).astype(np.float32)
    matched = losses.info_nce(jnp.asarray(anchor), jnp.asarray(anchor + 0.01), jnp.ones(4), 0.1)
    shuffled = losses.info_nce(jnp.asarray(anchor), jnp.asarray(anchor[::-1] + 0.01), jnp.ones(4), 0.1)
    assert float(matched) < float(shuffled)


# ----------------------------------------------------------------------------- co-occurrence
def test_item_overlap_counts_shared_items_and_ignores_padding():
    items = np.array([[1, 2, 3, 2, 0],   # item 2 twice: counted once
                      [2, 3, 5, 0, 0],
                      [7, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0],   # no events
                      [9, 1, 0, 0, 0]], np.int32)
    got = np.asarray(losses.item_overlap(jnp.asarray(items), num_buckets=64))
    sets = [set(row[row > 0].tolist()) for row in items]
    want = np.array([[len(a & b) for b in sets] for a in sets], np.float32)
    np.testing.assert_array_equal(got, want)
    assert got[3].sum() == 0 and got[0, 1] == 2 and got[0, 0] == 3


def _cooc_numpy(user, overlap, mask, temperature):
    u = _normalize(user.astype(np.float64))
    b = len(u)
    rows = []
    for i in range(b):
        if not mask[i]:
            continue
        others = [j for j in range(b) if j != i and mask[j]]
        w = np.array([overlap[i, j] for j in others], np.float64)
        if w.sum() <= 0:
            continue  # shares nothing with anyone: does not count
        logits = np.array([u[i] @ u[j] for j in others]) / temperature
        log_p = logits - _lse(logits)
        rows.append(-(w * log_p).sum() / w.sum())
    return np.mean(rows) if rows else 0.0


def test_co_occurrence_nce_matches_numpy_and_ignores_users_without_overlap():
    rng = np.random.default_rng(9)
    user = rng.standard_normal((6, 4)).astype(np.float32)
    overlap = np.array([[3, 2, 0, 0, 0, 1],
                        [2, 4, 1, 0, 0, 0],
                        [0, 1, 2, 0, 0, 0],
                        [0, 0, 0, 5, 0, 0],   # overlaps with nobody
                        [0, 0, 0, 0, 1, 3],   # overlaps only with a masked user
                        [1, 0, 0, 0, 3, 2]], np.float32)
    mask = np.array([1, 1, 1, 1, 1, 0], np.float32)
    got = float(losses.co_occurrence_nce(jnp.asarray(user), jnp.asarray(overlap), jnp.asarray(mask), 0.3))
    want = _cooc_numpy(user, overlap, mask, 0.3)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Rows 0..2 are the only anchors: the mean is over them, not diluted by users 3 and 4.
    anchors_only = _cooc_numpy(user[:3], overlap[:3, :3], np.ones(3), 0.3)
    assert abs(want - anchors_only) > 1e-3  # users 3, 4 still count as in-batch negatives
    zero = losses.co_occurrence_nce(jnp.asarray(user), jnp.asarray(np.diag(np.diag(overlap))), jnp.asarray(mask), 0.3)
    assert float(zero) == 0.0


def test_co_occurrence_nce_prefers_overlapping_users_close():
    overlap = np.array([[2, 2, 0, 0], [2, 2, 0, 0], [0, 0, 3, 3], [0, 0, 3, 3]], np.float32)
    e = np.eye(4, dtype=np.float32)
    close = np.stack([e[0], e[0] + 0.1 * e[2], e[1], e[1] + 0.1 * e[3]])  # 0≈1, 2≈3
    crossed = np.stack([e[0], e[1], e[0] + 0.1 * e[2], e[1] + 0.1 * e[3]])  # 0≈2, 1≈3
    args = (jnp.asarray(overlap), jnp.ones(4), 0.2)
    assert float(losses.co_occurrence_nce(jnp.asarray(close), *args)) < \
        float(losses.co_occurrence_nce(jnp.asarray(crossed), *args)) - 1.0


# ----------------------------------------------------------------------------- reconstruction
def test_categorical_recon_ignores_missing_targets():
    rng = np.random.default_rng(10)
    logits = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 6)).astype(np.float32)]
    targets = np.array([[2, 5], [0, 1], [0, 0]], np.int32)
    got = np.asarray(losses.categorical_recon([jnp.asarray(x) for x in logits], jnp.asarray(targets)))
    nll = lambda f, b: _lse(logits[f][b].astype(np.float64)) - logits[f][b, targets[b, f]]
    np.testing.assert_allclose(got, [(nll(0, 0) + nll(1, 0)) / 2, nll(1, 1), 0.0], rtol=1e-5)
    # Logits of a missing field can be anything.
    logits[0][1:] = 50.0 * rng.standard_normal((2, 4))
    again = np.asarray(losses.categorical_recon([jnp.asarray(x) for x in logits], jnp.asarray(targets)))
    np.testing.assert_allclose(again[1:], got[1:], rtol=1e-6)
    assert losses.categorical_recon([], jnp.zeros((3, 0), jnp.int32)).shape == (3,)


def test_numeric_recon_respects_mask():
    pred = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]], np.float32)
    target = np.array([[0.0, 2.0, 1.0], [9.0, 1.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    mask = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 0]], np.float32)
    got = np.asarray(losses.numeric_recon(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask)))
    np.testing.assert_allclose(got, [(1 + 0 + 4) / 3, 1.0, 0.0])
    empty = losses.numeric_recon(jnp.zeros((3, 0)), jnp.zeros((3, 0)), jnp.zeros((3, 0)))
    np.testing.assert_array_equal(np.asarray(empty), np.zeros(3))


def test_cosine_recon():
    pred = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)
    target = np.array([[3.0, 0.0], [0.0, -1.0], [1.0, 0.0]], np.float32)
    got = np.asarray(losses.cosine_recon(jnp.asarray(pred), jnp.asarray(target)))
    np.testing.assert_allclose(got, [0.0, 2.0, 1 - 1 / np.sqrt(2)], atol=1e-5)


def test_masked_mean():
    got = losses.masked_mean(jnp.array([1.0, 10.0, 3.0]), jnp.array([1, 0, 1]))
    assert float(got) == 2.0
    assert float(losses.masked_mean(jnp.array([1.0, 2.0]), jnp.zeros(2))) == 0.0


# ----------------------------------------------------------------------------- composition
def test_l_align_sums_enabled_terms_only():
    terms = {"u2i": jnp.array(1.5), "u2u": jnp.array(2.0), "cooc": jnp.array(jnp.nan)}
    got = losses.l_align(terms, {"u2i": 2.0, "u2u": 0.5, "cooc": 0.0})
    assert float(got) == pytest.approx(2.0 * 1.5 + 0.5 * 2.0)  # a switched-off term cannot leak a NaN
    assert float(losses.l_align({"u2i": jnp.array(1.0)}, {})) == 0.0


def test_l_sem_and_total_loss_composition():
    recon = {"tabular": jnp.array(1.0), "behaviour": jnp.array(2.0), "text": jnp.array(0.5)}
    quant = {"quant_shared": jnp.array(0.25), "quant_tabular": jnp.array(0.125)}
    sem = losses.l_sem(recon, quant)
    assert float(sem) == pytest.approx(3.875)
    assert float(losses.total_loss(sem, jnp.array(2.0), jnp.array(4.0), alpha=0.5, beta=0.25)) == \
        pytest.approx(3.875 + 0.5 * 2.0 + 0.25 * 4.0)
    assert float(losses.total_loss(sem, jnp.array(2.0), jnp.array(4.0), alpha=0.0, beta=0.0)) == pytest.approx(3.875)
