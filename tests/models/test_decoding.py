"""Constrained beam search over semantic IDs: exact against brute force, never an invalid ID."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from u2qt.models.decoding import NEG, PrefixIndex, beam_search

K, L = 4, 3


def _table(n, seed=0):
    rng = np.random.default_rng(seed)
    every = np.array(list(itertools.product(range(K), repeat=L)))
    return every[rng.choice(len(every), n, replace=False)]


def _model(seed=0):
    """A hand-built 'model': the log-probabilities of level l's codes depend on the row and on
    the whole prefix (a random table indexed by a hash of it), normalised over all K codes."""
    table = jax.random.normal(jax.random.key(seed), (5, K ** L, K)) * 2.0

    def logp_of(row, prefix_id):  # prefix_id: the prefix as a base-K number with a leading 1
        return jax.nn.log_softmax(table[row % 5, prefix_id % (K ** L)], -1)

    def step(token, level, state):
        prefix_id = state  # [B, W]
        rows = jnp.arange(token.shape[0])[:, None]
        return logp_of(rows, prefix_id), state

    def token_of(code, level):
        return code

    return logp_of, step, token_of


def _run(index, batch, beams, constrained=True, seed=0):
    logp_of, step, _ = _model(seed)

    # the state carries the prefix id (1, then 1·K + c0, ...); the token of a code updates it
    def step_with_prefix(token, level, state):
        prefix = jnp.where(level == 0, jnp.ones_like(state), state * K + token)
        return logp_of(jnp.arange(token.shape[0])[:, None], prefix), prefix

    return jax.jit(lambda: beam_search(step_with_prefix, jnp.zeros((batch, beams), jnp.int32), index, batch, beams,
                                       L, 0, lambda code, level: code, constrained))()


def _brute_force(codes, batch, seed=0):
    logp_of, _, _ = _model(seed)
    out = []
    for row in range(batch):
        totals = []
        for c in codes:
            prefix, total = 1, 0.0
            for level in range(L):
                total += float(logp_of(jnp.asarray(row), jnp.asarray(prefix))[c[level]])
                prefix = prefix * K + int(c[level])
            totals.append(total)
        out.append(np.asarray(totals))
    return np.stack(out)  # [batch, N]


def test_with_every_prefix_in_the_beam_the_search_is_exact():
    codes = _table(14)
    index = PrefixIndex.build(codes, k_max=K)
    beams = max(len(index.keys[0]), len(index.keys[1]))  # every prefix shorter than L fits
    items, logp, decoded, valid = _run(index, batch=5, beams=beams)
    brute = _brute_force(codes, 5)
    for row in range(5):
        best = np.argsort(-brute[row], kind="stable")[:beams]
        assert list(np.asarray(items[row])) == list(best + 1)  # items are 1..N in table order
        np.testing.assert_allclose(np.asarray(logp[row]), brute[row][best], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(decoded[row]), codes[best])
    assert bool(valid.all())


def _reference_beam(codes, row, beams, seed=0):
    """Plain Python beam search over the valid prefixes (the algorithm, written out)."""
    logp_of, _, _ = _model(seed)
    valid = {tuple(c[:l]) for c in codes for l in range(L + 1)}
    beam = [((), 0.0, 1)]
    for level in range(L):
        cand = []
        for prefix, score, pid in beam:
            lp = np.asarray(logp_of(jnp.asarray(row), jnp.asarray(pid)))
            for code in range(K):
                if prefix + (code,) in valid:
                    cand.append((prefix + (code,), score + float(lp[code]), pid * K + code))
        beam = sorted(cand, key=lambda c: -c[1])[:beams]
    return [b[0] for b in beam], [b[1] for b in beam]


@pytest.mark.parametrize("beams", [2, 3, 5])
def test_a_narrow_beam_matches_the_written_out_algorithm(beams):
    codes = _table(30, seed=1)
    index = PrefixIndex.build(codes, k_max=K)
    _, logp, decoded, valid = _run(index, batch=4, beams=beams)
    for row in range(4):
        seqs, scores = _reference_beam(codes, row, beams)
        assert [tuple(map(int, d)) for d in np.asarray(decoded[row])] == seqs
        np.testing.assert_allclose(np.asarray(logp[row]), scores, rtol=1e-5, atol=1e-5)


def test_constrained_search_never_decodes_an_id_that_is_not_an_item_and_unconstrained_does():
    codes = _table(9, seed=2)  # 9 of the 64 possible IDs: most code paths lead nowhere
    index = PrefixIndex.build(codes, items=np.arange(100, 109), k_max=K)
    items, logp, decoded, valid = _run(index, batch=5, beams=6, seed=3)
    table = {tuple(c) for c in codes}
    assert bool(valid.all()) and set(np.asarray(items).ravel()) <= set(range(100, 109))
    assert all(tuple(map(int, d)) in table for d in np.asarray(decoded).reshape(-1, L))
    for row_items, row_codes in zip(np.asarray(items), np.asarray(decoded)):  # item ↔ its own ID
        for item, c in zip(row_items, row_codes):
            np.testing.assert_array_equal(codes[item - 100], c)
    _, _, decoded_free, valid_free = _run(index, batch=5, beams=6, constrained=False, seed=3)
    assert not bool(valid_free.all())
    for d, ok in zip(np.asarray(decoded_free).reshape(-1, L), np.asarray(valid_free).ravel()):
        assert ok == (tuple(map(int, d)) in table)


def test_fewer_ids_than_beams_leaves_the_extra_beams_empty():
    codes = _table(3, seed=4)
    index = PrefixIndex.build(codes, k_max=K)
    items, logp, _, valid = _run(index, batch=2, beams=5)
    assert np.asarray(valid).sum(1).tolist() == [3, 3]
    assert (np.asarray(logp)[:, 3:] <= NEG / 2).all() and (np.asarray(items)[:, 3:] == 0).all()


def test_a_table_with_duplicate_ids_is_refused():
    with pytest.raises(ValueError, match="duplicate rows"):
        PrefixIndex.build(np.array([[0, 1], [0, 1]]))
