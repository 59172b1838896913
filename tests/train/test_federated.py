"""The federated trainer (u2qt/train/federated.py) around the unchanged train step: FedAvg,
per-expert averaging, private state that never reaches the server, resume equality, learning."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from u2qt import config as config_lib

TYPES, BLOCK = 4, 10  # users of type t touch only the items of block t
ITEMS = TYPES * BLOCK


def _typed_users(root, users=120, length=10, seed=0):
    """Each user walks their type's block of 10 items in a fixed cycle from a random start: the
    next item is learnable from the last one (an untrained model ranks it ~at random)."""
    rng = np.random.default_rng(seed)
    path = os.path.join(root, "typed")
    os.makedirs(path, exist_ok=True)
    kinds, starts = rng.integers(0, TYPES, users), rng.integers(0, BLOCK, users)
    inter = {f"u{u}": [str(k * BLOCK + (s + j) % BLOCK) for j in range(length)]
             for u, (k, s) in enumerate(zip(kinds, starts))}
    json.dump(inter, open(os.path.join(path, "Typed.inter.json"), "w"))
    json.dump({str(i): {"title": f"thing {i}"} for i in range(ITEMS)}, open(os.path.join(path, "Typed.item.json"), "w"))
    return path


def _config(data, variant="beauty,paper,adamw,runlocal", **overrides):
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "federated.py") + ":" + variant)
    overrides = {"data.path": data, "data.max_history": 8, "model.dropout": 0.0, **overrides}
    for key, value in overrides.items():
        config_lib.apply_override(cfg, key, value if isinstance(value, str) else repr(value))
    return cfg


def _setup(cfg, tmp_path):
    """(task, tx, part, server, store, data, weights, constants) as the trainer builds them."""
    from u2qt.tasks.federated import FederatedRecTask
    from u2qt.train import federated as fed
    cfg.train.steps = cfg.federated.rounds * cfg.federated.local_steps
    task = FederatedRecTask(cfg, str(tmp_path / "cache"), log=lambda m: None)
    data, weights = task.client_data()
    tx = fed.client_optimizer(cfg, task)
    sample = {k: np.asarray(v[:1]) for k, v in task.examples.items() if k in task.model_keys}
    server, store, part = fed.initial_federation(task, tx, cfg, sample, task.constants, task.num_clients + 1)
    constants = {k: jnp.asarray(v) for k, v in task.constants.items()}
    return task, tx, part, server, store, {k: jnp.asarray(v) for k, v in data.items()}, jnp.asarray(weights), constants


def _round(task, tx, cfg, part, clients, chunk, rows):
    from u2qt.train import federated as fed
    from u2qt.train.sharding import Placement
    sizes = {"clients_per_round": clients, "chunk": chunk, "rows": rows}
    return jax.jit(fed.make_round(task, tx, cfg, part, Placement(chunk), sizes))


def _local_updates(task, tx, cfg, part, server, store, data, constants):
    """Each client's leaves after its local training from ``server`` and its store row (vmapped over
    every client, as the round runs it), and the route that training started from."""
    from u2qt.train import federated as fed
    from u2qt.train.step import make_train_step
    ids = jnp.arange(task.num_clients)
    keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.key(0), c))(ids)
    train = fed.local_training(make_train_step(task, tx, cfg), cfg, data["inputs"].shape[1])
    start = fed.client_states(part, server, store, ids)
    final, _ = jax.vmap(train, in_axes=(0, 0, None, 0))(start, data, constants, keys)
    return (part.leaves({"params": final["params"], "opt_state": final["opt_state"]}),
            jax.vmap(task.route)(start["params"], data))


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    """MRFF on typed users, every client in the round: the setup, the compiled round, and each
    client's own local training (vmapped over all clients, as the round runs it)."""
    tmp_path = tmp_path_factory.mktemp("fed")
    cfg = _config(_typed_users(str(tmp_path)), "beauty,mrff,paper,adamw,runlocal",
                  **{"federated.client_fraction": 1.0, "model.seq_layers": 1})
    task, tx, part, server, store, data, weights, constants = _setup(cfg, tmp_path)
    n = task.num_clients
    round_fn = _round(task, tx, cfg, part, n, n, data["inputs"].shape[1])

    @jax.jit
    def local(server, store, data):
        """Each client's leaves after its local training from ``server`` and its store row, and its route."""
        return _local_updates(task, tx, cfg, part, server, store, data,
                              dict(constants, route_share=server["route_share"]))

    def run_round(server, store, data, weights):
        return round_fn(jax.tree.map(jnp.copy, server), jax.tree.map(jnp.copy, store), data, weights,
                        jnp.arange(n, dtype=jnp.int32), constants)

    return dict(cfg=cfg, task=task, part=part, server=server, store=store, data=data, weights=weights,
                constants=constants, run_round=run_round, local=local)


def test_fedavg_of_identical_client_updates_equals_the_single_client_update(fed):
    part, server, store = fed["part"], fed["server"], fed["store"]
    # Every client holds client 0's rows and private leaves: the same update from the same start.
    same = {k: jnp.broadcast_to(v[:1], v.shape) for k, v in fed["data"].items()}
    same_store = {k: jnp.broadcast_to(v[:1], v.shape) for k, v in store.items()}
    single, _ = fed["local"](server, same_store, same)
    new, new_store, _ = fed["run_round"](server, same_store, same, fed["weights"] * 0 + 3.0)
    moved = 0
    for n in new["leaves"]:
        want = single[n][0]
        if n in part.where(("group",)):  # only the routed expert moved the same way in every client
            k = int(np.argmax(np.asarray(new["route_share"])))
            want, got, before = want[k], new["leaves"][n][k], server["leaves"][n][k]
        else:
            got, before = new["leaves"][n], server["leaves"][n]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=n)
        moved += not np.array_equal(got, before)
    assert moved > 10 and int(new["round"]) == 1 and int(new["step"]) == fed["cfg"].federated.local_steps
    f = fed["cfg"].federated  # the private parameters' step: θ_p + s·(θ_p' − θ_p)
    for n in new_store:
        want = single[n][:5]
        if n in part.where(("private",), ("param",)):
            s = f.user_embedding_lr_scale if n == "params.user_embedding" else f.private_lr_scale
            want = same_store[n][:5] + s * (want - same_store[n][:5])
        np.testing.assert_allclose(new_store[n][:5], want, rtol=1e-5, atol=1e-6, err_msg=n)


def test_a_group_expert_is_averaged_only_over_the_clients_routed_to_it(fed):
    part, task = fed["part"], fed["task"]
    leaves = dict(fed["server"]["leaves"])
    # The gate routes by the sign of u[0]: expert 0 for u[0] = +5, expert 1 for u[0] = -5.
    g0, g1 = "params.gate.Dense_0", "params.gate.Dense_1"
    leaves[f"{g0}.kernel"] = jnp.zeros_like(leaves[f"{g0}.kernel"]).at[0, 0].set(1.0)
    leaves[f"{g0}.bias"] = jnp.zeros_like(leaves[f"{g0}.bias"])
    leaves[f"{g1}.kernel"] = jnp.zeros_like(leaves[f"{g1}.kernel"]).at[0].set(jnp.array([10.0, -10.0]))
    leaves[f"{g1}.bias"] = jnp.array([-1.0, 1.0])
    server = dict(fed["server"], leaves=leaves)
    user = "params.user_embedding"
    store = fed["store"]
    sign = jnp.where(jnp.arange(store[user].shape[0]) % 3 == 0, 5.0, -5.0)  # a third on expert 0
    store = dict(store, **{user: store[user].at[:, 0].set(sign)})
    after, routes = fed["local"](server, store, fed["data"])
    routes = np.asarray(routes)
    n_clients = task.num_clients
    assert (routes == (np.arange(n_clients) % 3 != 0)).all()
    w = np.asarray(fed["weights"])
    new, new_store, metrics = fed["run_round"](server, store, fed["data"], fed["weights"])
    group = part.where(("group",))
    assert any(".mu." in n for n in group) and any(n.startswith("params.") for n in group)
    for n in group:
        x = np.asarray(after[n])
        for k in (0, 1):
            on = routes == k
            # The weighted mean over the routed clients only; the others' copies of expert k
            # (moved by weight decay) do not count.
            want = np.tensordot(w[on], x[on, k], 1) / w[on].sum()
            np.testing.assert_allclose(new["leaves"][n][k], want, rtol=1e-5, atol=1e-7, err_msg=f"{n}[{k}]")
            if n.startswith("params.") and n.endswith("w_in"):
                over_all = np.tensordot(w, x[:, k], 1) / w.sum()
                assert not np.allclose(over_all, want, rtol=0, atol=1e-7)  # the rule is what decides
    np.testing.assert_allclose(new["route_share"], [np.mean(routes == 0), np.mean(routes == 1)])
    assert float(metrics["experts_used"]) == 2.0
    for c in (0, 1, 5):  # private leaves went back to each client's own row
        np.testing.assert_allclose(new_store[user][c], after[user][c], rtol=1e-6, atol=1e-7)


def test_an_expert_no_client_is_routed_to_stays_as_it_was(fed):
    leaves = dict(fed["server"]["leaves"])
    leaves["params.gate.Dense_1.bias"] = jnp.array([50.0, -50.0])  # everyone on expert 0
    server = dict(fed["server"], leaves=leaves)
    new, _, metrics = fed["run_round"](server, fed["store"], fed["data"], fed["weights"])
    for n in fed["part"].where(("group",)):
        np.testing.assert_array_equal(new["leaves"][n][1], server["leaves"][n][1], err_msg=n)
        assert not np.array_equal(new["leaves"][n][0], server["leaves"][n][0]), n
    assert float(metrics["experts_used"]) == 1.0


def test_private_lr_scales_scale_the_private_steps_and_nothing_else(fed):
    """private_lr_scale scales the private experts' step, user_embedding_lr_scale the user
    embedding's, each on its own; neither touches the moments or the server's update."""
    from u2qt.train.step import make_optimizer
    part, server, store, n = fed["part"], fed["server"], fed["store"], fed["task"].num_clients
    single, _ = fed["local"](server, store, fed["data"])  # every client's local training at s = 1
    base, base_store, _ = fed["run_round"](server, store, fed["data"], fed["weights"])
    private = part.where(("private",), ("param",))
    user = "params.user_embedding"
    assert user in private and len(private) > 1 and set(private) < set(store)
    for s, s_user in ((0.5, 0.5), (0.0, 1.0), (1.0, 0.0)):
        cfg = fed["cfg"].copy_and_resolve_references()
        cfg.federated.private_lr_scale = s
        cfg.federated.user_embedding_lr_scale = s_user
        round_fn = _round(fed["task"], make_optimizer(cfg, fed["task"]), cfg, part, n, n, fed["data"]["inputs"].shape[1])
        new, new_store, _ = round_fn(jax.tree.map(jnp.copy, server), jax.tree.map(jnp.copy, store), fed["data"],
                                     fed["weights"], jnp.arange(n, dtype=jnp.int32), fed["constants"])
        for name in private:  # θ_p + s·(θ_p' − θ_p), each client from its own local training
            scale = s_user if name == user else s
            want = np.asarray(store[name][:n]) + scale * (np.asarray(single[name]) - np.asarray(store[name][:n]))
            np.testing.assert_allclose(new_store[name][:n], want, rtol=1e-5, atol=1e-6, err_msg=name)
            moved = not np.allclose(new_store[name][:n], store[name][:n], rtol=0, atol=1e-7)
            assert moved == (scale > 0), (name, scale)
        for name in set(store) - set(private):  # their moments: as the local training left them
            np.testing.assert_array_equal(new_store[name], base_store[name], err_msg=name)
        for name in new["leaves"]:  # the server's update does not depend on s
            np.testing.assert_array_equal(new["leaves"][name], base["leaves"][name], err_msg=name)


def _server_config(cfg, **keys):
    f = cfg.federated.copy_and_resolve_references()
    f.update(keys)
    return f


def test_server_sgd_at_lr_1_is_fedavg_and_server_lr_scales_its_step(fed):
    from u2qt import defaults
    from u2qt.train import federated as fedlib
    assert set(fedlib.SERVER_TRANSFORMS) == set(defaults.SERVER_OPTIMIZERS)
    part, before = fed["part"], fed["server"]["leaves"]
    assert fed["cfg"].federated.server_optimizer == "sgd" and fed["cfg"].federated.server_lr == 1.0  # the default
    rng = np.random.default_rng(0)
    names = part.where(("shared", "group"), ("param",))
    delta = {n: jnp.asarray(rng.normal(0, 1e-2, before[n].shape), before[n].dtype) for n in names}
    used = jnp.array([True, False])
    for lr in (1.0, 0.25):
        opt = fedlib.ServerOptimizer(_server_config(fed["cfg"], server_lr=lr), part)
        assert opt.init(before) == {}  # plain sgd keeps no state: the server state is FedAvg's
        new, state = opt.apply({}, before, delta, used)
        assert state == {} and set(new) == set(names)
        for n in names:
            want = np.asarray(before[n]) + lr * np.asarray(delta[n])
            got = np.asarray(new[n])
            if n in part.where(("group",)):  # expert 1 unused: as it was
                np.testing.assert_array_equal(got[1], before[n][1], err_msg=n)
                got, want = got[0], want[0]
            if lr == 1.0:  # exactly today's FedAvg step
                np.testing.assert_array_equal(got, want, err_msg=n)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=n)


def test_server_adam_steps_from_the_fedavg_update_and_leaves_an_unused_expert_exactly(fed):
    import optax
    from u2qt.train import federated as fedlib
    from u2qt.train.step import make_optimizer
    cfg, part, task = fed["cfg"], fed["part"], fed["task"]
    f = _server_config(cfg, server_optimizer="adam", server_lr=1e-2)
    adam_cfg = cfg.copy_and_resolve_references()
    adam_cfg.federated = f
    leaves = dict(fed["server"]["leaves"])
    leaves["params.gate.Dense_1.bias"] = jnp.array([50.0, -50.0])  # everyone on expert 0
    opt = fedlib.ServerOptimizer(f, part)
    server = dict(fed["server"], leaves=leaves, server_opt=opt.init(leaves))
    assert any(".mu." in n for n in server["server_opt"]) and any("count" in n for n in server["server_opt"])
    n = task.num_clients
    round_fn = _round(task, make_optimizer(adam_cfg, task), adam_cfg, part, n, n, fed["data"]["inputs"].shape[1])
    args = (fed["data"], fed["weights"], jnp.arange(n, dtype=jnp.int32),
            {k: jnp.asarray(v) for k, v in task.constants.items()})
    fedavg, _, _ = fed["run_round"](dict(fed["server"], leaves=leaves), fed["store"], fed["data"], fed["weights"])
    new, _, _ = round_fn(jax.tree.map(jnp.copy, server), jax.tree.map(jnp.copy, fed["store"]), *args)
    assert set(new["server_opt"]) == set(server["server_opt"])
    # The FedAvg update Δ of this round (the sgd round from the same state) through optax's Adam.
    names = part.where(("shared", "group"), ("param",))
    delta = {m: fedavg["leaves"][m] - leaves[m] for m in names}
    tx = optax.adam(1e-2, b1=f.server_momentum, b2=f.server_b2, eps=f.server_tau)
    for m in names:
        if m in part.where(("group",)):
            step, _ = tx.update(-delta[m][0], tx.init(leaves[m][0]))
            got, base = new["leaves"][m][0], leaves[m][0]
            np.testing.assert_array_equal(new["leaves"][m][1], leaves[m][1], err_msg=m)  # unused: exactly
        else:
            step, _ = tx.update(-delta[m], tx.init(leaves[m]))
            got, base = new["leaves"][m], leaves[m]
        np.testing.assert_allclose(got - base, step, rtol=1e-2, atol=2e-4, err_msg=m)
    moved = [m for m in names if not np.array_equal(new["leaves"][m], leaves[m])]
    assert len(moved) > 10
    for m, v in new["server_opt"].items():  # the unused expert's count and moments: as they were
        if m.startswith("group."):
            np.testing.assert_array_equal(v[1], server["server_opt"][m][1], err_msg=m)
            if m.endswith("count"):
                assert int(v[0]) == 1 and int(v[1]) == 0
    # Client moments are not the server optimizer's: they stay the plain mean (as under FedAvg).
    for m in part.where(("shared",), ("moment",)):
        np.testing.assert_allclose(new["leaves"][m], fedavg["leaves"][m], rtol=1e-5, atol=1e-8, err_msg=m)


def test_message_and_server_never_hold_private_leaves(fed):
    from u2qt.train import federated as fedlib
    part, server, store = fed["part"], fed["server"], fed["store"]
    private = set(part.where(("private",)))
    assert {"params.user_embedding"} < private and any("private_expert" in n for n in private)
    assert any(".mu." in n and "private_expert" in n for n in private)  # their Adam moments too
    for dp in (False, True):
        sent = fedlib.message_names(part, dp)
        assert sent and not private & set(sent)
        assert any("group_expert" in n for n in sent) and any("id_embedding" in n for n in sent)
    assert not private & set(server["leaves"]) and set(store) == private


def test_a_round_is_cut_into_even_chunks_that_the_devices_divide():
    from u2qt.train.federated import chunk_size
    assert chunk_size(150, 128, 1) == 75  # 2 chunks of 75, not 128 + 22 clients in a padded 128
    assert chunk_size(300, 128, 1) == 100 and chunk_size(300, 300, 1) == 300 and chunk_size(300, 1000, 1) == 300
    assert chunk_size(7, 3, 1) == 3 and chunk_size(1, 128, 1) == 1
    assert chunk_size(150, 128, 8) == 80 and chunk_size(5, 128, 4) == 8  # a multiple of the devices
    for clients in range(1, 300):
        for most in (1, 7, 32, 128):
            chunk = chunk_size(clients, most, 1)
            chunks = -(-clients // chunk)
            assert chunk <= most and chunks == -(-clients // min(most, clients))  # as few chunks as before
            assert chunks * chunk - clients < chunks  # less than one padding slot per chunk


def test_clients_are_users_random_groups_or_an_attribute():
    from u2qt.tasks.federated import group_users
    np.testing.assert_array_equal(group_users(5, "user"), np.arange(5))
    groups = group_users(23, "random", group_size=5, seed=1)
    assert sorted(np.bincount(groups).tolist()) == [3, 5, 5, 5, 5]
    assert not np.array_equal(groups, np.arange(23) // 5)  # shuffled
    np.testing.assert_array_equal(group_users(4, "attribute", attribute=np.array(["M", "F", "M", "F"])), [1, 0, 1, 0])


def test_with_all_windows_a_client_holds_every_window_of_its_user_and_trains_on_them(tmp_path):
    from u2qt.tasks.federated import FederatedRecTask
    from u2qt.train import federated as fed
    cfg = _config(_typed_users(str(tmp_path), users=12), "beauty,mrff,runlocal",
                  **{"data.max_history": 3, "data.windows": 0, "federated.local_batch": 2})
    task = FederatedRecTask(cfg, str(tmp_path / "cache"), log=lambda m: None)
    data, weights = task.client_data()
    assert data["inputs"].shape[:2] == (12, 3)  # 8 training items: windows of 3 + 3 + 1 targets
    for u, seq in enumerate(task.split.train):
        real = (data["targets"][u] > 0).any(-1)
        pairs = sorted((int(a), int(b)) for a, b in zip(data["inputs"][u].ravel(), data["targets"][u].ravel()) if b)
        assert real.sum() == 3 and pairs == sorted(zip(seq[:-1].tolist(), seq[1:].tolist()))
        assert weights[u] == len(seq) - 1 and (data["client"][u] == task.client_of_user[u]).all()
    # a local step draws local_batch of the client's rows (here 2 of its 3)
    drawn = jax.jit(fed.local_training(lambda state, batch, c: (state, batch["targets"]), cfg, 3))
    rows = {k: jnp.asarray(v[0]) for k, v in data.items()}
    _, picked = drawn(0, rows, {}, jax.random.key(0))
    assert picked.shape == (cfg.federated.local_steps, 2, 3)
    for row in np.asarray(picked).reshape(-1, 3):
        assert any((row == r).all() for r in data["targets"][0])


def test_ranking_without_the_private_experts_is_a_setting_and_each_report_has_the_other(tmp_path):
    from u2qt.tasks.federated import FederatedRecTask
    from u2qt.train import federated as fed
    data = _typed_users(str(tmp_path), users=40)
    cfg = _config(data, "beauty,mrff,runlocal", **{"model.seq_layers": 1})
    task, _, part, server, store, *_ = _setup(cfg, tmp_path)
    params = fed.eval_params(part, server, store, task.num_clients)
    noise = jax.random.split(jax.random.key(3), len(jax.tree.leaves(params)))
    params = jax.tree.unflatten(jax.tree.structure(params), [  # private experts that change the ranking
        x + 0.5 * jax.random.normal(k, x.shape) if r == "private" else x
        for x, r, k in zip(jax.tree.leaves(params), jax.tree.leaves(task.roles(params)), noise)])
    on = task.report(params, {})
    off_task = FederatedRecTask(_config(data, "beauty,mrff,runlocal", **{"model.seq_layers": 1,
                                                                          "eval.private_experts": "off"}),
                                str(tmp_path / "cache"), log=lambda m: None)
    off = off_task.report(params, {})
    for k in ("Recall@10", "NDCG@10", "valid_Recall@10", "valid_NDCG@10"):
        assert on[f"private_off_{k}"] == off[k] and off[f"private_on_{k}"] == on[k], k
    assert on["NDCG@10"] != off["NDCG@10"]
    from u2qt import defaults
    with pytest.raises(config_lib.ConfigError, match="eval.private_experts"):
        config_lib.validate(_config(data, "beauty,mrff,runlocal", **{"eval.private_experts": "maybe"}),
                            defaults.CONSTRAINTS, defaults.cross_key_problems)


def test_dp_clips_each_client_update_and_fedavg_sasrec_has_no_private_leaves(tmp_path):
    from u2qt.train import federated as fedlib
    clip = 1e-3
    cfg = _config(_typed_users(str(tmp_path), users=40), "beauty,fedavg,adamw,runlocal",
                  **{"federated.client_fraction": 1.0, "federated.dp_clip": clip, "model.seq_layers": 1,
                     "train.lr": 1e-2, "train.warmup_steps": 0})
    task, tx, part, server, store, data, weights, constants = _setup(cfg, tmp_path)
    assert store == {} and not part.where(("private", "group"))
    sent = fedlib.message_names(part, dp=True)
    assert sent == part.where(("shared",), ("param",))  # no moments under DP
    round_fn = _round(task, tx, cfg, part, task.num_clients, 16, data["inputs"].shape[1])
    new, _, _ = round_fn(jax.tree.map(jnp.copy, server), store, data, weights,
                         jnp.arange(task.num_clients, dtype=jnp.int32), constants)
    norm = np.sqrt(sum(np.sum((np.asarray(new["leaves"][n]) - np.asarray(server["leaves"][n])) ** 2) for n in sent))
    # A mean of updates clipped to `clip` has norm <= clip; unclipped, lr 1e-2 moves far more.
    assert 0.1 * clip < norm <= clip * (1 + 1e-4), norm
    for n in part.where(("shared",), ("moment",)):  # the server's moments stay without DP-protected moments
        np.testing.assert_array_equal(new["leaves"][n], server["leaves"][n])


def test_client_sgd_sends_only_parameters_and_one_local_step_is_the_mean_clipped_gradient(tmp_path):
    """FedSGD: one local SGD step per client and the server's plain step at lr 1 move the shared
    parameters by -lr · the weighted mean of each client's gradient clipped to clip_norm."""
    import optax
    from u2qt.train import federated as fedlib
    lr, clip = 0.5, 2.5
    cfg = _config(_typed_users(str(tmp_path), users=40), "beauty,fedavg,adamw,runlocal",
                  **{"federated.client_fraction": 1.0, "federated.client_optimizer": "sgd",
                     "federated.local_steps": 1, "model.seq_layers": 1, "train.lr": lr, "train.clip_norm": clip})
    task, tx, part, server, store, data, weights, constants = _setup(cfg, tmp_path)
    assert part.where(kinds=("moment", "count")) == []  # SGD keeps no optimizer state
    assert fedlib.message_names(part, dp=False) == part.where(("shared",), ("param",))
    n = task.num_clients
    round_fn = _round(task, tx, cfg, part, n, 16, data["inputs"].shape[1])
    new, _, _ = round_fn(jax.tree.map(jnp.copy, server), store, data, weights, jnp.arange(n, dtype=jnp.int32),
                         constants)
    # Each client's raw gradient: one step of the same train step with clipping off and lr -1.
    raw = optax.chain(optax.clip_by_global_norm(1e9), optax.scale(-1.0))
    after, _ = _local_updates(task, raw, cfg, part, server, store, data, constants)
    names = part.where(("shared",), ("param",))
    grads = {m: np.asarray(server["leaves"][m])[None] - np.asarray(after[m], np.float64) for m in names}
    norms = np.sqrt(sum(np.sum(g.reshape(n, -1) ** 2, 1) for g in grads.values()))
    assert (norms > clip).any() and (norms < clip).any(), norms  # both sides of the clip are exercised
    w = np.asarray(weights, np.float64) * np.minimum(1.0, clip / norms)
    for m in names:
        want = np.asarray(server["leaves"][m]) - lr * np.tensordot(w, grads[m], 1) / np.sum(np.asarray(weights))
        np.testing.assert_allclose(new["leaves"][m], want, rtol=1e-4, atol=1e-6, err_msg=m)


def test_history_routes_decide_which_clients_average_each_zero_started_delta_expert(tmp_path):
    """route_on "history" + expert_base "shared": the round routes each client by its own rows,
    averages each group expert (a delta started at zero) over the clients so routed only, and the
    shared feed-forward over all of them; no user embedding is stored."""
    cfg = _config(_typed_users(str(tmp_path), users=40), "beauty,mrff,paper,adamw,runlocal",
                  **{"federated.client_fraction": 1.0, "federated.client_optimizer": "sgd", "federated.local_steps": 1,
                     "model.seq_layers": 1, "train.lr": 0.5, "model.route_on": "history", "model.expert_base": "shared"})
    task, tx, part, server, store, data, weights, constants = _setup(cfg, tmp_path)
    assert not any("user_embedding" in n for n in part.names)
    group = [n for n in part.where(("group",), ("param",)) if n.endswith("w_out")]
    base = [n for n in part.where(("shared",), ("param",)) if "shared_expert" in n]
    assert group and base
    for n in group:
        np.testing.assert_array_equal(server["leaves"][n], 0.0)
    n_clients = task.num_clients
    after, routes = _local_updates(task, tx, cfg, part, server, store, data, constants)
    routes = np.asarray(routes)
    assert set(routes.tolist()) == {0, 1}, routes  # the clients' histories split them over both experts
    round_fn = _round(task, tx, cfg, part, n_clients, 8, data["inputs"].shape[1])
    new, _, metrics = round_fn(jax.tree.map(jnp.copy, server), store, data, weights,
                               jnp.arange(n_clients, dtype=jnp.int32), constants)
    w = np.asarray(weights, np.float64)
    np.testing.assert_allclose(new["route_share"], [np.mean(routes == 0), np.mean(routes == 1)])
    for n in group:
        x = np.asarray(after[n], np.float64)
        for k in (0, 1):
            on = routes == k
            want = np.tensordot(w[on], x[on, k], 1) / w[on].sum()
            np.testing.assert_allclose(new["leaves"][n][k], want, rtol=1e-4, atol=1e-7, err_msg=f"{n}[{k}]")
            assert np.abs(want).max() > 0  # the routed clients moved their expert off zero
    for n in base:  # the shared feed-forward: the mean over every client
        want = np.tensordot(w, np.asarray(after[n], np.float64), 1) / w.sum()
        np.testing.assert_allclose(new["leaves"][n], want, rtol=1e-4, atol=1e-7, err_msg=n)


def test_the_server_cosine_schedule_warms_up_and_decays_and_group_experts_step_at_their_scale(fed):
    from u2qt.train import federated as fedlib
    from u2qt.train.step import learning_rate
    part, before = fed["part"], fed["server"]["leaves"]
    names = part.where(("shared", "group"), ("param",))
    delta = {m: jnp.ones_like(before[m]) for m in names}  # Adam on a constant Δ: a step of lr every round
    m = part.where(("shared",), ("param",))[0]
    g = part.where(("group",), ("param",))[0]
    for scale in (1.0, 0.25):
        f = _server_config(fed["cfg"], server_lr=0.5, server_schedule="cosine", server_warmup_rounds=2, rounds=10,
                           server_optimizer="adam", server_tau=1e-8, group_lr_scale=scale)
        opt = fedlib.ServerOptimizer(f, part)
        state, leaves, used = opt.init(before), dict(before), jnp.array([True, False])
        steps = []
        for r in range(10):
            new, state = opt.apply(state, leaves, delta, used)
            steps.append(float(np.mean(np.asarray(new[m]) - np.asarray(leaves[m]))))
            np.testing.assert_array_equal(new[g][1], leaves[g][1])  # the unused expert: as it was
            np.testing.assert_allclose(new[g][0] - leaves[g][0], scale * steps[-1], rtol=1e-4, atol=1e-7,
                                       err_msg=g)  # its own count, its own scale
            leaves.update(new)
        want = [float(learning_rate(r, 0.5, 2, 10)) for r in range(10)]  # the shared leaves: whatever the scale
        np.testing.assert_allclose(steps, want, rtol=1e-4, atol=1e-7)
        assert steps[0] == 0.0 and steps[2] == pytest.approx(0.5, rel=1e-4) and steps[9] < 0.1  # warm-up, peak, decay
    assert fedlib.server_learning_rate(_server_config(fed["cfg"], server_lr=0.5)) == 0.5  # constant: the default


@pytest.mark.heavy
def test_federated_run_private_state_stays_out_of_the_server_checkpoint_and_resume_equals_uninterrupted(
        tmp_path, compile_cache):
    import orbax.checkpoint as ocp
    from u2qt.train.loop import run  # the loop dispatches a config with a federated family
    data = _typed_users(str(tmp_path), users=60)
    # The shipped MRFF: FedAdam (client SGD; the server's Adam state is resumed too), history routes
    # over a shared feed-forward.
    small = {"federated.client_fraction": 0.2, "model.seq_layers": 1}
    cfg = _config(data, "beauty,mrff,runlocal", **small)
    assert cfg.federated.server_optimizer == "adam" and cfg.model.route_on == "history"
    whole = run(cfg, str(tmp_path / "whole"))
    assert whole["rounds"] == 4 and whole["clients_per_round"] == 12 and whole["bytes_up_per_round"] > 0
    halted = run(_config(data, "beauty,mrff,runlocal", **small, **{"train.halt_after_step": 2}), str(tmp_path / "split"))
    assert halted == {"halted_at": 2}
    resumed = run(cfg, str(tmp_path / "split"))
    assert resumed["test"] == whole["test"]
    assert {"private_off_Recall@10", "private_off_NDCG@10"} <= set(whole["test"])  # MRFF's ablation row
    for name in ("server", "clients"):
        a = ocp.StandardCheckpointer().restore(str(tmp_path / "whole" / "checkpoints" / "4" / name))
        b = ocp.StandardCheckpointer().restore(str(tmp_path / "split" / "checkpoints" / "4" / name))
        jax.tree.map(np.testing.assert_array_equal, a, b)
    # The server's checkpoint item: no private leaf, nothing stacked over clients.
    server = ocp.StandardCheckpointer().restore(str(tmp_path / "whole" / "checkpoints" / "4" / "server"))
    clients = ocp.StandardCheckpointer().restore(str(tmp_path / "whole" / "checkpoints" / "4" / "clients"))
    rows = next(iter(clients.values())).shape[0]
    assert set(clients) and all("user_embedding" in n or "private_expert" in n for n in clients)
    for n, v in list(server["leaves"].items()) + list(server["server_opt"].items()):
        assert "user_embedding" not in n and "private_expert" not in n, n
        assert v.ndim == 0 or v.shape[0] != rows, n
    assert int(server["server_opt"]["shared.0.count"]) == 4  # one server step per round
    assert os.path.exists(tmp_path / "whole" / "training.png")
    rows = [json.loads(line) for line in open(tmp_path / "whole" / "metrics.jsonl")]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4] and all(r["bytes_up"] > 0 and r["clients"] == 12 for r in train)


def test_select_metric_reports_the_best_evaluation_and_its_copy_survives_a_resume(tmp_path, compile_cache,
                                                                                  monkeypatch, capsys):
    """With train.select_metric the report ranks with the server leaves and client store of the
    evaluation that scored best (scripted here: round 2 of 4), not the last round's; the best copy
    is checkpointed (never in the server item), so killed after round 3 and resumed ends the same."""
    import orbax.checkpoint as ocp
    from u2qt.tasks.federated import FederatedRecTask
    from u2qt.train import federated as fed
    data = _typed_users(str(tmp_path), users=60)
    small = {"federated.client_fraction": 0.2, "model.seq_layers": 1, "train.select_metric": "valid_NDCG@10",
             "train.eval_every": 1, "train.checkpoint_every": 1, "train.keep_checkpoints": 4}
    cfg = _config(data, "beauty,mrff,runlocal", **small)
    real = FederatedRecTask.evaluate
    scores = {"left": []}

    def scripted(self, params, constants):  # the real evaluation, its selection score scripted
        return dict(real(self, params, constants), **{"valid_NDCG@10": scores["left"].pop(0)})

    monkeypatch.setattr(FederatedRecTask, "evaluate", scripted)
    scores["left"] = [0.1, 0.5, 0.2, 0.3]
    whole = fed.run(cfg, str(tmp_path / "whole"))
    assert whole["selected"] == {"metric": "valid_NDCG@10", "value": 0.5, "step": 2}
    # The report is the round-2 federation's, read back from that round's checkpoint.
    task, _, part, *_ = _setup(cfg.copy_and_resolve_references(), tmp_path)
    restore = ocp.StandardCheckpointer().restore
    at2 = {name: restore(str(tmp_path / "whole" / "checkpoints" / "2" / name)) for name in ("server", "clients")}
    assert whole["test"] == task.report(fed.eval_params(part, at2["server"], at2["clients"], task.num_clients), {})
    last = {name: restore(str(tmp_path / "whole" / "checkpoints" / "4" / name)) for name in ("server", "clients")}
    assert whole["test"] != task.report(fed.eval_params(part, last["server"], last["clients"], task.num_clients), {})
    best = restore(str(tmp_path / "whole" / "checkpoints" / "4" / "best"))
    assert not any("user_embedding" in n or "private_expert" in n for n in best["leaves"])
    best_clients = restore(str(tmp_path / "whole" / "checkpoints" / "4" / "best_clients"))
    assert set(best["leaves"]) == set(part.where(kinds=("param",))) - set(best_clients)  # parameters only
    for n in best["leaves"]:
        np.testing.assert_array_equal(best["leaves"][n], at2["server"]["leaves"][n])
    for n in best_clients:
        np.testing.assert_array_equal(best_clients[n], at2["clients"][n])
    # Killed after round 3 (its best, round 2, checkpointed with it) and resumed: the same report.
    scores["left"] = [0.1, 0.5, 0.2]
    assert fed.run(_config(data, "beauty,mrff,runlocal", **small, **{"train.halt_after_step": 3}),
                   str(tmp_path / "split")) == {"halted_at": 3}
    import shutil
    shutil.copytree(tmp_path / "split", tmp_path / "old")
    scores["left"] = [0.3]
    resumed = fed.run(cfg, str(tmp_path / "split"))
    assert resumed["selected"] == whole["selected"] and resumed["test"] == whole["test"]
    # A checkpoint written before select_metric was honoured (no best items): the selection
    # starts over from the rounds after it, and the run says so.
    for item in ("best", "best_clients"):
        shutil.rmtree(tmp_path / "old" / "checkpoints" / "3" / item)
    scores["left"] = [0.3]
    old = fed.run(cfg, str(tmp_path / "old"))
    assert old["selected"] == {"metric": "valid_NDCG@10", "value": pytest.approx(0.3), "step": 4}
    assert "holds no best-so-far copy" in capsys.readouterr().out
    # A selection metric the evaluation does not produce is refused by name.
    scores["left"] = [0.1]
    with pytest.raises(config_lib.ConfigError, match="select_metric='valid_MRR' is not an eval metric"):
        fed.run(_config(data, "beauty,mrff,runlocal", **dict(small, **{"train.select_metric": "valid_MRR"})),
                str(tmp_path / "unknown"))


@pytest.mark.heavy
def test_clients_split_over_four_devices_train_as_on_one(tmp_path, compile_cache):
    """A round's client axis sharded over the mesh's data axis (4 CPU devices, 12 clients a round:
    3 per device, the client store split by rows) ends two rounds with the server and client
    states of one device (up to the order of the cross-device sums)."""
    import subprocess
    import sys
    import orbax.checkpoint as ocp
    from u2qt.train.loop import run
    if len(jax.devices()) != 1:
        pytest.skip("the reference run needs a one-device process")
    data = _typed_users(str(tmp_path), users=60)
    flags = {"federated.client_fraction": 0.2, "model.seq_layers": 1, "federated.rounds": 2,
             "train.eval_every": 1, "train.checkpoint_every": 2, "train.log_every": 1,
             "train.select_metric": "valid_NDCG@10"}  # a best copy too, sharded as the store
    one = run(_config(data, "beauty,mrff,paper,adamw,runlocal", **flags), str(tmp_path / "one"))
    argv = [sys.executable, os.path.join(REPO, "train.py"), "--config",
            os.path.join(REPO, "configs", "federated.py") + ":beauty,mrff,paper,adamw,runlocal", "--workdir", str(tmp_path / "four")]
    argv += [f"--config.{k}={v if isinstance(v, str) else repr(v)}"
             for k, v in {"data.path": data, "data.max_history": 8, "model.dropout": 0.0, **flags}.items()]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "12 at a time under vmap on 4 cpu device(s)" in done.stdout, done.stdout[-3000:]
    four = json.load(open(tmp_path / "four" / "summary.json"))
    scalars = lambda test: {k: v for k, v in test.items() if isinstance(v, float)}
    assert scalars(four["test"]) == pytest.approx(scalars(one["test"]), abs=1e-6)
    restore = ocp.StandardCheckpointer().restore
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    assert four["selected"] == dict(one["selected"], value=pytest.approx(one["selected"]["value"], abs=1e-6))
    for name in ("server", "clients", "best", "best_clients"):
        a = restore(str(tmp_path / "one" / "checkpoints" / "2" / name))
        # The four-device checkpoint read onto this one device: 64 store rows there (61 here: 60
        # clients and the spare row, rounded up to the devices); the 60 clients' rows compared.
        rows = lambda x: (64,) + x.shape[1:] if name.endswith("clients") else x.shape
        b = restore(str(tmp_path / "four" / "checkpoints" / "2" / name),
                    jax.tree.map(lambda x: jax.ShapeDtypeStruct(rows(x), x.dtype, sharding=here), a))
        far = {}
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
            key = jax.tree_util.keystr(path)
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            if name.endswith("clients"):
                x, y = x[:60], y[:60]
            if "key.bias" in key:  # its gradient is 0 (softmax ignores a shift of every logit of a
                continue           # query): Adam scales rounding noise up to steps of ~lr there
            if not np.allclose(x, y, rtol=1e-5, atol=1e-6):
                far[key] = float(np.max(np.abs(x - y)))
        assert not far, (name, far)


@pytest.mark.heavy
def test_trained_mrff_beats_the_untrained_model(tmp_path, compile_cache):
    from u2qt.train import federated as fed
    data = _typed_users(str(tmp_path), users=160)
    cfg = _config(data, "beauty,mrff,paper,adamw,runlocal", **{
        "federated.client_fraction": 0.5, "federated.rounds": 12, "federated.local_steps": 2, "train.lr": 1e-2,
        "train.warmup_steps": 2, "train.log_every": 6, "train.eval_every": 12, "train.checkpoint_every": 12,
        "model.seq_layers": 1})
    trained = fed.run(cfg, str(tmp_path / "trained"))["test"]
    # The same federation before any round (the trainer's initial server state and client store).
    task, _, part, server, store, *_ = _setup(cfg.copy_and_resolve_references(), tmp_path)
    untrained = task.report(fed.eval_params(part, server, store, task.num_clients), {})
    # The next item is one of the 10 of the user's block, among 40: untrained ranks it ~at random.
    assert trained["Recall@10"] >= untrained["Recall@10"] + 0.3, (trained, untrained)
    assert trained["NDCG@10"] >= untrained["NDCG@10"] + 0.2, (trained, untrained)
    # Fresh private experts add nothing: zeroing them leaves the untrained ranking as it is.
    assert untrained["private_off_Recall@10"] == untrained["Recall@10"]
