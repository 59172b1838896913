"""EfficientRec's equations: LightGCN propagation against a dense reference, the ID-free user
encoder, soft clusters and the pruned candidate sets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from u2qt.errors import DataError
from u2qt.models.efficientrec import (EfficientRec, bipartite_graph, check_history, cluster_candidates,
                                      cluster_shortlists, history_inputs, interaction_item_scores, pooling_weights,
                                      profile_users, propagate, ranked_item_scores, routed)


def _sequences(users=7, items=11, seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, items + 1, rng.integers(1, 6)).astype(np.int32) for _ in range(users)]
    seqs[3] = np.zeros(0, np.int32)  # a user with no training interaction: no edge
    return seqs


def test_propagation_equals_the_dense_normalized_adjacency_reference():
    users, items, d, layers = 7, 11, 5, 3
    seqs = _sequences(users, items)
    g = bipartite_graph(seqs, items)
    rng = np.random.default_rng(1)
    item0 = rng.normal(size=(items + 1, d)).astype(np.float32)
    user0 = rng.normal(size=(users, d)).astype(np.float32)
    got_items, got_users = propagate(jnp.asarray(item0), jnp.asarray(user0), g["edge_user"], g["edge_item"],
                                     g["edge_norm"], layers)
    # Dense reference: R [U, I+1] with R_ui = 1 if u touched i; A = [[0, R], [R^T, 0]];
    # Â = D^-1/2 A D^-1/2; E^(k+1) = Â E^(k); final = mean of E^(0..K).
    r = np.zeros((users, items + 1))
    for u, s in enumerate(seqs):
        r[u, s] = 1.0
    a = np.block([[np.zeros((users, users)), r], [r.T, np.zeros((items + 1, items + 1))]])
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-12)), 0.0)
    norm = inv[:, None] * a * inv[None, :]
    e = np.concatenate([user0, item0]).astype(np.float64)
    total = e.copy()
    for _ in range(layers):
        e = norm @ e
        total += e
    want = total / (layers + 1)
    np.testing.assert_allclose(np.asarray(got_users), want[:users], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_items), want[users:], rtol=1e-5, atol=1e-5)


def test_a_repeated_interaction_is_one_edge_and_its_value_the_mean():
    g = bipartite_graph([np.array([2, 2, 3], np.int32)], 3, [np.array([1.0, 3.0, 5.0], np.float32)])
    assert g["edge_item"].tolist() == [2, 3] and g["edge_value"].tolist() == [2.0, 5.0]
    np.testing.assert_allclose(g["edge_norm"], 1 / np.sqrt(2.0))  # |N_u| = 2, |N_i| = 1
    with pytest.raises(ValueError, match="1..3"):
        bipartite_graph([np.array([4], np.int32)], 3)


def test_an_id_free_user_is_the_mean_of_its_items_and_pooling_weights_follow_recency_and_value():
    item0 = jnp.arange(12.0).reshape(6, 2)
    users = profile_users(item0, jnp.array([0, 0, 1]), jnp.array([1, 3, 5]), 2)
    np.testing.assert_allclose(np.asarray(users), [[4.0, 5.0], [10.0, 11.0]])
    history = jnp.array([[0, 2, 5], [0, 0, 1]])
    items, ages, values, mask = history_inputs(history, jnp.array([[0.0, 1.0, 0.0], [0, 0, 0.0]]))
    w = pooling_weights(jnp.array([0.0, 0.0, 0.0]), jnp.array(np.log(3.0)), ages, values, mask)
    np.testing.assert_allclose(np.asarray(w), [[0, 0.75, 0.25], [0, 0, 1]], rtol=1e-6)  # value 1 weighs e^α = 3x
    w = pooling_weights(jnp.array([1.0, 0.0, 0.0]), jnp.zeros(()), ages, jnp.zeros((2, 3)), mask)
    assert float(w[0, 2]) > float(w[0, 1])  # the most recent (age 0) weighs more


def test_pruning_scores_exactly_the_union_of_the_chosen_clusters_shortlists():
    rng = np.random.default_rng(0)
    users, clusters, size, items, top_m = 9, 6, 4, 30, 2
    member = rng.random((users, clusters)).astype(np.float32)
    shortlists = rng.integers(0, items + 1, (clusters, size)).astype(np.int32)  # with padding 0 and repeats
    cand, unique = cluster_candidates(jnp.asarray(member), jnp.asarray(shortlists), top_m)
    cand, unique = np.asarray(cand), np.asarray(unique)
    for u in range(users):
        chosen = np.argsort(-member[u])[:top_m]
        want = set(shortlists[chosen].ravel().tolist()) - {0}
        assert sorted(cand[u][unique[u]].tolist()) == sorted(want)


def test_shortlists_rank_items_by_membership_weighted_interactions_and_never_list_untouched_items():
    member = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    # user 0 touched items 1, 2; user 1 items 3, 4; user 2 item 2
    edge_user, edge_item = jnp.array([0, 0, 1, 1, 2]), jnp.array([1, 2, 3, 4, 2])
    lists = np.asarray(cluster_shortlists(interaction_item_scores(member, edge_user, edge_item, jnp.ones(5), 6), 3))
    assert lists[0].tolist() == [2, 1, 0]  # item 2: 1 + 0.5, item 1: 1; no third item touched (0 = padding)
    assert sorted(lists[1, :2].tolist()) == [3, 4] and lists[1, 2] == 2  # item 2: 0.5, after 3 and 4 (1 each)


def test_model_shortlists_weight_each_user_s_own_ranking_by_rank_and_membership():
    member = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    top = jnp.array([[5, 1], [3, 4], [1, 6]])  # each user's top-2 items of the full ranking, best first
    scores = np.asarray(ranked_item_scores(member, top, 6))
    w0, w1 = 1.0, 1.0 / np.log2(3.0)
    assert np.allclose(scores[1], [w1 + 0.5 * w0, 0.5 * w0]) and np.allclose(scores[6], [0.5 * w1, 0.5 * w1])
    assert np.allclose(scores[[0, 2]], 0.0)  # padding and an item nobody ranked
    lists = np.asarray(cluster_shortlists(jnp.asarray(scores), 4))
    assert lists[0].tolist() == [1, 5, 6, 0]  # w1 + 0.5 (1.13), 1.0, 0.5·w1; nothing else reached
    assert lists[1].tolist() == [3, 4, 1, 6]  # 1.0, w1, 0.5, 0.5·w1
    # A user counts only for the clusters that serve it (its top-m memberships).
    kept = np.asarray(routed(jnp.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.3]]), 2))
    assert np.allclose(kept, [[0.9, 0.0, 0.7], [0.0, 0.8, 0.3]])


def test_the_id_free_model_has_no_parameter_per_user_and_the_id_table_does():
    def count(model):
        return sum(x.size for x in jax.tree.leaves(model.init(jax.random.key(0))))
    small, large = (EfficientRec(num_items=50, dim=8, max_history=5, num_users=n) for n in (10, 100_000))
    assert count(small) == count(large)
    table = [EfficientRec(num_items=50, dim=8, max_history=5, num_users=n, user_table=True) for n in (10, 1000)]
    assert count(table[1]) - count(table[0]) == 990 * 8


def test_bad_histories_are_refused_with_a_clear_message():
    check_history(np.array([[0, 1, 2]]), 5)
    with pytest.raises(DataError, match=r"users \[1\] have no interactions"):
        check_history(np.array([[0, 1, 2], [0, 0, 0]]), 5)
    with pytest.raises(DataError, match="item index 9 is not in the catalogue 1..5"):
        check_history(np.array([[0, 9, 2]]), 5)


def test_the_benchmark_table_shows_id_free_bytes_constant_and_id_table_bytes_growing(capsys):
    import importlib.util
    import os
    from conftest import REPO
    spec = importlib.util.spec_from_file_location("bench_efficientrec", os.path.join(REPO, "scripts", "bench_efficientrec.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--users", "100,1000", "--items", "50", "--shortlist", "5", "--clusters", "4",
                       "--batch", "8", "--batches", "1"])
    assert rows[0]["id_free_model_bytes"] == rows[1]["id_free_model_bytes"]
    assert rows[1]["id_table_model_bytes"] - rows[0]["id_table_model_bytes"] == 900 * 64 * 4
    assert all(r["id_free_pruned_us_per_user"] > 0 for r in rows)
    assert "| 1,000 |" in capsys.readouterr().out
