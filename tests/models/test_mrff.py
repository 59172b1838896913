"""MRFF (u2qt/models/mrff.py): who owns which parameter, top-1 routing per client, the balance
loss, and the SASRec backbone's left-padding invariance."""
import jax
import jax.numpy as jnp
import numpy as np

from u2qt.models.mrff import MRFF, balance_loss, parameter_role, route, without_private_experts
from u2qt.tasks.federated import key_names

ITEMS = 30


def _model(**kw):
    return MRFF(num_items=ITEMS, d_model=16, num_layers=2, num_heads=2, dropout=0.0, max_len=8, experts=3,
                private_hidden=4, gate_hidden=8, **kw)


def _params(model, seed=0):
    return model.init(jax.random.key(seed), jnp.ones((1, 8), jnp.int32))["params"]


def test_roles_private_group_shared():
    params = _params(_model())
    roles = {key_names(p)[-2:] if "group_expert" in key_names(p) else key_names(p): parameter_role(key_names(p))
             for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert roles[("user_embedding",)] == "private"
    assert roles[("id_embedding",)] == roles[("position_embedding",)] == "shared"
    flat = {".".join(key_names(p)): parameter_role(key_names(p)) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert {r for n, r in flat.items() if "private_expert" in n} == {"private"}
    assert {r for n, r in flat.items() if "group_expert" in n} == {"group"}
    assert {r for n, r in flat.items() if n.startswith("gate") or "Attention" in n} == {"shared"}
    # Group experts are stacked on a leading expert axis.
    assert params["blocks_0"]["group_expert"]["w_in"].shape == (3, 16, 64)


def test_the_recommendation_loss_reaches_only_the_routed_expert_and_the_gate():
    model = _model()
    params = _params(model)
    items = jnp.array([[0, 0, 3, 7, 1, 9, 4, 2]])
    k, scale = route(model.apply({"params": params}, method=MRFF.route_probs))

    def loss(p):
        hidden, _ = model.apply({"params": p}, items)
        return jnp.sum(hidden[:, -1] @ model.apply({"params": p}, method=MRFF.item_table).T)

    grads = jax.grad(loss)(params)
    g = np.asarray(grads["blocks_0"]["group_expert"]["w_in"])
    norms = np.abs(g).reshape(3, -1).sum(1)
    assert norms[int(k)] > 0 and np.all(np.delete(norms, int(k)) == 0)
    assert np.abs(np.asarray(grads["gate"]["Dense_1"]["kernel"])).sum() > 0  # through the scale p_k*
    assert np.abs(np.asarray(grads["user_embedding"])).sum() > 0
    assert 0 < float(scale) <= 1


def test_route_is_top1_per_client():
    probs = jnp.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    k, p = route(probs)
    np.testing.assert_array_equal(k, [1, 0])
    np.testing.assert_allclose(p, [0.5, 0.6])


def test_balance_loss_is_alpha_k_sum_share_times_prob_and_pushes_off_the_busy_expert():
    probs = jnp.array([0.5, 0.3, 0.2])
    share = jnp.array([0.8, 0.1, 0.1])
    np.testing.assert_allclose(balance_loss(probs, share, 0.5), 0.5 * 3 * (0.4 + 0.03 + 0.02), rtol=1e-6)
    # Uniform shares: constant for any probabilities (nothing to balance).
    np.testing.assert_allclose(balance_loss(probs, jnp.full(3, 1 / 3), 1.0), 1.0, rtol=1e-6)
    logits = jnp.zeros(3)
    g = jax.grad(lambda z: balance_loss(jax.nn.softmax(z), share, 1.0))(logits)
    assert g[0] > 0 and g[1] < 0 and g[2] < 0  # descent lowers the busy expert's probability


def test_left_padding_keeps_the_last_hidden_state():
    model = _model()
    params = _params(model)
    short = jnp.array([[5, 6, 7]])
    padded = jnp.array([[0, 0, 0, 0, 0, 5, 6, 7]])
    a, _ = model.apply({"params": params}, short)
    b, _ = model.apply({"params": params}, padded)
    np.testing.assert_allclose(a[:, -1], b[:, -1], rtol=1e-5, atol=1e-5)


def test_a_fresh_private_expert_adds_nothing_until_its_client_trains_it():
    """Every client's private expert starts at zero output: hidden states at init are the same
    as with the private experts removed (a random start added each client its own noise), and
    one gradient step moves the expert away from zero."""
    model = _model()
    items = jnp.array([[0, 0, 3, 7, 1, 9, 4, 2]])
    for seed in (0, 1):
        params = _params(model, seed)
        off = without_private_experts(params)
        np.testing.assert_array_equal(model.apply({"params": params}, items)[0], model.apply({"params": off}, items)[0])
    table = model.apply({"params": params}, method=MRFF.item_table)
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, items)[0][:, -1] @ table.T))(params)
    assert np.abs(np.asarray(grads["blocks_0"]["private_expert"]["Dense_1"]["kernel"])).sum() > 0


def test_without_private_experts_removes_the_private_expert_term_and_nothing_else():
    """With trained (nonzero) private experts the hidden states change when they are removed, and
    equal those of the same parameters whose private experts' output layer is zero (E^p = 0); every
    other leaf is left as it is, on one client's parameters and on parameters stacked over clients."""
    model = _model()
    items = jnp.array([[0, 0, 3, 7, 1, 9, 4, 2]])
    params = _params(model)
    keys = iter(jax.random.split(jax.random.key(5), 8))
    trained = jax.tree_util.tree_map_with_path(
        lambda p, x: jax.random.normal(next(keys), x.shape) if "private_expert" in key_names(p) else x, params)
    out_zero = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.zeros_like(x) if {"private_expert", "Dense_1"} <= set(key_names(p)) else x, trained)
    off = without_private_experts(trained)
    hidden = model.apply({"params": trained}, items)[0]
    hidden_off = model.apply({"params": off}, items)[0]
    assert np.abs(np.asarray(hidden - hidden_off)).max() > 1e-3
    np.testing.assert_allclose(hidden_off, model.apply({"params": out_zero}, items)[0], rtol=1e-6, atol=1e-6)
    stacked = jax.tree.map(lambda x: jnp.stack([x, x + 1]), trained)
    before = jax.tree_util.tree_flatten_with_path(stacked)[0]
    after = jax.tree.leaves(without_private_experts(stacked))
    for (p, x), y in zip(before, after, strict=True):
        want = jnp.zeros_like(x) if "private_expert" in key_names(p) else x
        np.testing.assert_array_equal(y, want, err_msg=".".join(key_names(p)))


def test_group_experts_start_as_copies_of_one_draw_or_as_independent_draws():
    copies = _params(_model())["blocks_0"]["group_expert"]
    for name in ("w_in", "w_out"):
        w = np.asarray(copies[name])
        assert w.std() > 0.05  # a real draw, not zeros
        np.testing.assert_array_equal(w, np.broadcast_to(w[0], w.shape))
    independent = _params(_model(expert_start="independent"))["blocks_0"]["group_expert"]["w_in"]
    assert not np.allclose(independent[0], independent[1])
    np.testing.assert_allclose(np.asarray(copies["w_in"]).std(), np.asarray(independent).std(), rtol=0.2)


def test_history_routing_reads_only_the_clients_items_and_keeps_no_user_embedding():
    """route_on "history": p = G(LN(mean of the client's item embeddings)), one route for all of a
    client's rows, blind to padding and row order; the gate does not train the item embeddings
    (stop-gradient) and there is no private u."""
    model = _model(route_on="history")
    params = _params(model)
    assert "user_embedding" not in params
    assert {parameter_role(key_names(p)) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
            if "private_expert" not in key_names(p)} == {"shared", "group"}
    probs = lambda items: model.apply({"params": params}, jnp.asarray(items), method=MRFF.route_probs)
    rows = [[0, 0, 3, 7, 1, 9], [0, 0, 0, 5, 6, 2]]
    p = probs(rows)
    np.testing.assert_allclose(p, probs([rows[1], rows[0]]), rtol=1e-6)  # row order
    np.testing.assert_allclose(p, probs([[0, 0, 0, 0, 3, 7, 1, 9], [0, 0, 0, 0, 0, 5, 6, 2]]), rtol=1e-6)  # padding
    np.testing.assert_allclose(p, probs([[3, 7, 1, 9, 5, 6, 2]]), rtol=1e-6)  # the same items in one row
    assert np.abs(np.asarray(p - probs([[0, 0, 11, 12, 13, 14]]))).max() > 1e-4  # other items, another p
    np.testing.assert_allclose(model.apply({"params": params}, jnp.asarray(rows))[1], p, rtol=1e-6)  # as the forward uses
    grads = jax.grad(lambda q: jnp.sum(model.apply({"params": q}, jnp.asarray(rows), method=MRFF.route_probs)
                                       * jnp.arange(3.0)))(params)
    assert np.abs(np.asarray(grads["gate"]["Dense_1"]["kernel"])).sum() > 0
    np.testing.assert_array_equal(grads["id_embedding"], 0.0)
    try:
        model.apply({"params": params}, method=MRFF.route_probs)
    except ValueError as e:
        assert "history" in str(e)
    else:
        raise AssertionError("route_probs without items under route_on 'history' did not raise")


def test_a_shared_base_makes_the_group_experts_zero_started_deltas():
    """expert_base "shared": a fresh MRFF computes the same hidden states whichever expert the
    client is routed to (every group expert's W_2 is 0), its shared feed-forward E^s is a shared
    parameter that changes the output, and a trained group expert then changes it by route."""
    model = _model(expert_base="shared")
    params = _params(model)
    items = jnp.array([[0, 0, 3, 7, 1, 9, 4, 2]])
    block = params["blocks_0"]
    np.testing.assert_array_equal(block["group_expert"]["w_out"], 0.0)
    assert {parameter_role(key_names(p)) for p, _ in jax.tree_util.tree_flatten_with_path(block["shared_expert"])[0]} \
        == {"shared"}
    assert parameter_role(("blocks_0", "shared_expert", "Dense_0", "kernel")) == "shared"

    def routed_to(p, k):  # the gate's last bias pinned so that every client goes to expert k
        b = jnp.full((3,), -50.0).at[k].set(50.0)
        return {**p, "gate": {**p["gate"], "Dense_1": {**p["gate"]["Dense_1"], "bias": b}}}

    hidden = [model.apply({"params": routed_to(params, k)}, items)[0] for k in range(3)]
    np.testing.assert_allclose(hidden[0], hidden[1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hidden[0], hidden[2], rtol=1e-6, atol=1e-6)
    no_base = jax.tree_util.tree_map_with_path(lambda p, x: jnp.zeros_like(x) if "shared_expert" in key_names(p) else x,
                                               params)
    assert np.abs(np.asarray(model.apply({"params": no_base}, items)[0] - model.apply({"params": params}, items)[0])).max() > 1e-3
    moved = jax.tree_util.tree_map_with_path(  # expert 1's W_2 trained away from 0 (a random matrix here)
        lambda p, x: x.at[1].set(jax.random.normal(jax.random.key(2), x.shape[1:]))
        if key_names(p)[-1] == "w_out" and "group_expert" in key_names(p) else x, params)
    a, b = (model.apply({"params": routed_to(moved, k)}, items)[0] for k in (0, 1))
    assert np.abs(np.asarray(a - b)).max() > 1e-3
