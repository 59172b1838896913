"""The federated trainer: an outer loop of rounds around the UNCHANGED train step
(``u2qt/train/step.py``), as MaxText's DiLoCo wraps its inner step. ``loop.run`` comes here when
the config has a ``federated`` family.

One round (``federated.*``):
  1. the server samples ``client_fraction`` of the clients that hold data (seeded; the sampling
     key is part of the server state, so a resumed run samples the same clients);
  2. each sampled client starts from the server's shared and group parameters (and their Adam
     moments) plus its own private parameters and their moments, and runs ``local_steps`` steps
     of the train step on ``local_batch`` of its rows (all of them when it holds no more). The
     clients of a round run together: ``jax.vmap`` of the local training over a leading client
     axis, ``clients_per_chunk`` at a time (a ``lax.scan`` over chunks), that axis sharded over
     the mesh's "data" axis;
  3. the server aggregates what the clients send up (the message): shared leaves by FedAvg, the
     mean of the clients' updates weighted by their count of training targets; each group
     expert's leaves over the clients routed to it only (a client's route: the one its local
     training started from; left as they were when none was); the
     share of clients on each expert (the balance loss's f for the next round). Private leaves
     are written back to the client store [num_clients, ...], which is never part of the server
     state, the message, or the server's checkpoint item.
  4. the server optimizer (``server_optimizer``, Reddi et al. 2021, "Adaptive Federated
     Optimization") turns each averaged parameter update Δ into the step: the pseudo-gradient
     -Δ goes through an optax transform: "sgd" (new = before + server_lr · Δ; server_lr 1, the
     default, is plain FedAvg), "momentum" (FedAvgM), "adam" (FedAdam), "yogi" (FedYogi), with
     ``server_momentum`` (β1), ``server_b2`` and ``server_tau`` (ε, the adaptivity). Its state
     is part of the server state (checkpointed): one for the shared leaves, and one per group
     expert (its own count), updated only for an expert some client used this round, so an
     unused expert keeps its parameters and its server moments exactly. The clients' averaged
     Adam moments are NOT put through it: they stay the plain weighted mean, the start of the
     next round's local AdamW (unchanged from FedAvg). DP noise is added to Δ before the server
     optimizer (post-processing keeps the DP guarantee).
Optimizer: each client's AdamW (``make_optimizer``) runs with the server's step count (so the
warm-up / cosine schedule spans rounds × local_steps), the shared moments averaged like the
parameters (they are in the message) and its private moments kept in its store. Or
(``client_optimizer`` "sgd") plain clipped SGD at a constant ``train.lr``, with nothing but the
parameters in the message; the server optimizer then owns the adaptivity and, with
``server_schedule`` "cosine", the schedule (FedAdam: ``server_optimizer`` "adam").
DP-FedAvg (``dp_clip`` > 0): each client's parameter update (shared + its routed expert) is
clipped to that L2 norm, and with ``dp_noise`` = z Gaussian noise of std z · clip · max weight /
Σ weights (the weighted mean's sensitivity) is added to each average. With DP on, moments are not
sent up (they would leak the gradients): the server's moments stay as they are.

Checkpoints (one Orbax item each, written together, so a kill never splits them): "server" (the
server state: shared and group leaves, the step and optimizer counts, the round, the sampling key,
the route shares and the server optimizer's state when it has one) and "clients" (the client
store). With ``train.select_metric`` the trainer keeps a copy of the parameter leaves (server
and client store, no optimizer state) from the evaluation that scored best on that validation
metric, items "best" and "best_clients" (when clients hold private leaves) of the same checkpoint,
and the report ranks with them. Killed (``train.halt_after_step`` rounds) and resumed equals
uninterrupted, the best copy included. Units:
``train.log_every``, ``eval_every``, ``checkpoint_every`` and ``halt_after_step`` count rounds;
``train.steps`` is set to rounds × local_steps (the clients' optimizer schedule).
"""
from __future__ import annotations

import contextlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from u2qt import config as config_lib
from u2qt import defaults
from u2qt import files
from u2qt.data.tfds_builder import examples_fingerprint
from u2qt.errors import STORAGE_ERRNOS, ConfigError, NonFiniteError, WorkdirError
from u2qt.models.mrff import is_user_embedding
from u2qt.progress import Progress, on_terminal
from u2qt.tasks.core import make_task
from u2qt.tasks.federated import key_names
from u2qt.train import checkpoint, distributed, report
from u2qt.train.sharding import Placement
from u2qt.train.step import InFlight, init_state, learning_rate, make_optimizer, make_train_step
from u2qt.train.workdir import (MetricsWriter, check_data, data_fingerprint, open_workdir, run_once_options,
                                save_config)


def log(msg: str) -> None:
    if distributed.is_main():
        print(msg, flush=True)


class Partition:
    """Who holds each leaf of a client's train state {"params", "opt_state"}: its name (the key
    path joined by "."), role ("shared", "group", "private", or "global" for the optimizer's
    counts) and kind ("param", "moment": an optimizer leaf shaped like a parameter, "count")."""

    def __init__(self, task, state: dict):
        roles = {key_names(p): r for p, r in jax.tree_util.tree_flatten_with_path(task.roles(state["params"]))[0]}
        flat, self.treedef = jax.tree_util.tree_flatten_with_path({"params": state["params"],
                                                                   "opt_state": state["opt_state"]})
        self.names, self.roles, self.kinds = [], [], []
        for path, _ in flat:
            names = key_names(path)
            role, kind = "global", "count"
            if names[0] == "params":
                role, kind = roles[names[1:]], "param"
            else:
                for i in range(1, len(names)):
                    if names[i:] in roles:
                        role, kind = roles[names[i:]], "moment"
                        break
            self.names.append(".".join(names))
            self.roles.append(role)
            self.kinds.append(kind)
        if len(set(self.names)) != len(self.names):
            raise AssertionError("two leaves of the train state share a name")

    def leaves(self, tree) -> dict:
        return dict(zip(self.names, jax.tree.leaves(tree)))

    def tree(self, by_name: dict):
        return jax.tree_util.tree_unflatten(self.treedef, [by_name[n] for n in self.names])

    def where(self, roles=None, kinds=None) -> list[str]:
        return [n for n, r, k in zip(self.names, self.roles, self.kinds)
                if (roles is None or r in roles) and (kinds is None or k in kinds)]


def nbytes(arrays) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(arrays)))


def message_names(part: Partition, dp: bool) -> list[str]:
    """The leaves a client sends up (and the server averages): the shared and group parameters,
    and their moments unless DP is on. Never a private one."""
    kinds = ("param",) if dp else ("param", "moment")
    return part.where(("shared", "group"), kinds)


def message_bytes(part: Partition, leaves: dict, experts: int, dp: bool) -> tuple[int, int]:
    """(bytes down, bytes up) per client and round: down, the message's leaves (every expert) and
    the route shares; up, its shared leaves, the routed expert's share of the group leaves, the
    route and the weight."""
    names = message_names(part, dp)
    shared = nbytes([leaves[n] for n in names if n in part.where(("shared",))])
    group = nbytes([leaves[n] for n in names if n in part.where(("group",))])
    return shared + group + 4 * experts + 4, shared + group // max(experts, 1) + 8


# The server optimizers (choices of ``federated.server_optimizer``): the optax transform of the
# pseudo-gradient, from the ``federated`` family and its learning rate (a number or a schedule).
SERVER_TRANSFORMS = {
    "sgd": lambda f, lr: optax.sgd(lr),
    "momentum": lambda f, lr: optax.sgd(lr, momentum=f.server_momentum),
    "adam": lambda f, lr: optax.adam(lr, b1=f.server_momentum, b2=f.server_b2, eps=f.server_tau),
    "yogi": lambda f, lr: optax.yogi(lr, b1=f.server_momentum, b2=f.server_b2, eps=f.server_tau),
}


def server_learning_rate(f, scale: float = 1.0):
    """``scale`` × ``server_lr`` (``server_schedule`` "constant"), or the schedule of the optimizer's
    update count: linear warm-up over ``server_warmup_rounds``, then cosine decay to 5% of that peak
    at round ``rounds`` (``learning_rate``, the train step's shape, in rounds)."""
    peak = scale * f.server_lr
    if f.server_schedule == "constant":
        return peak
    return lambda count: learning_rate(count, peak, f.server_warmup_rounds, f.rounds)


def client_optimizer(cfg, task):
    """The clients' local optimizer (``federated.client_optimizer``): the train step's AdamW, or SGD."""
    return make_optimizer(cfg, task, cfg.federated.client_optimizer)


class ServerOptimizer:
    """The server's step on the parameter leaves of the message from the round's averaged client
    update Δ: before + transform(-Δ). Its state is a flat {name: array} (the server state's
    "server_opt"; empty for plain "sgd", which then keeps no state): the optax state of the shared
    leaves, and of the group leaves with a leading expert axis (the transform vmapped over the K
    experts), so that an expert no client used is left exactly as it was, count and moments too.
    The group leaves step at ``group_lr_scale`` × the server lr (the same schedule)."""

    def __init__(self, f, part: Partition):
        self.tx = {"shared": SERVER_TRANSFORMS[f.server_optimizer](f, server_learning_rate(f)),
                   "group": SERVER_TRANSFORMS[f.server_optimizer](f, server_learning_rate(f, f.group_lr_scale))}
        self.names = {"shared": part.where(("shared",), ("param",)), "group": part.where(("group",), ("param",))}

    def _states(self, leaves: dict) -> dict:
        init = {"shared": self.tx["shared"].init, "group": jax.vmap(self.tx["group"].init)}
        return {role: init[role]({n: leaves[n] for n in names}) for role, names in self.names.items() if names}

    def _layout(self, leaves: dict):
        abstract = jax.eval_shape(self._states, {n: jax.ShapeDtypeStruct(leaves[n].shape, leaves[n].dtype)
                                                 for names in self.names.values() for n in names})
        flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
        return [".".join(key_names(p)) for p, _ in flat], treedef

    def init(self, leaves: dict) -> dict:
        names, _ = self._layout(leaves)
        return dict(zip(names, jax.tree.leaves(self._states(leaves))))

    def apply(self, state: dict, before: dict, delta: dict, used: jax.Array) -> tuple[dict, dict]:
        """(the new parameter leaves, the new state) from the mean updates ``delta`` (every name
        of ``self.names``) and ``used`` [K] (whether some client of the round used each expert)."""
        names, treedef = self._layout(before)
        states = jax.tree_util.tree_unflatten(treedef, [state[n] for n in names])
        old = states.get("group")
        update = {"shared": self.tx["shared"].update, "group": jax.vmap(self.tx["group"].update)}
        new = {}
        for role, opt_state in states.items():
            steps, states[role] = update[role]({n: -delta[n] for n in self.names[role]}, opt_state)
            new.update({n: before[n] + steps[n] for n in self.names[role]})
        if "group" in states:
            def keep(x, old):  # an expert no client used: as it was
                return jnp.where(used.reshape(used.shape + (1,) * (x.ndim - 1)), x, old)
            states["group"] = jax.tree.map(keep, states["group"], old)
            new.update({n: keep(new[n], before[n]) for n in self.names["group"]})
        return new, dict(zip(names, jax.tree.leaves(states)))


def local_training(step, cfg, rows_per_client: int):
    """train(state, rows, constants, key) -> (state, metrics [E, ...]): ``federated.local_steps``
    steps of the unchanged train step on one client's rows (``local_batch`` of them per step,
    drawn with ``key``; all of them when the client holds no more)."""
    f = cfg.federated

    def train(state, rows, constants, key):
        def body(state, e):
            if rows_per_client <= f.local_batch:
                batch = rows
            else:  # the client's n rows fill its first n slots
                n = jnp.maximum(jnp.sum(jnp.any(rows["targets"] > 0, -1)), 1)
                pick = jax.random.randint(jax.random.fold_in(key, e), (f.local_batch,), 0, n)
                batch = jax.tree.map(lambda x: x[pick], rows)
            return step(state, batch, constants)
        return jax.lax.scan(body, state, jnp.arange(f.local_steps))

    return train


def chunk_size(clients: int, most: int, devices: int) -> int:
    """Clients per vmap chunk for ``clients`` per round, at most ``most`` (rounded up to a multiple
    of the ``devices`` the chunk is split over): the chunks as even as they can be, so the last one
    is not mostly padding (150 clients at most 128: 2 chunks of 75, not 128 + 22 real of 128)."""
    chunks = -(-clients // max(1, min(most, clients)))
    chunk = -(-clients // chunks)
    return -(-chunk // devices) * devices


def client_states(part: Partition, server: dict, store: dict, ids: jax.Array) -> dict:
    """The train states of clients ``ids`` [c]: the server's leaves (broadcast) with each
    client's private leaves from its store row."""
    c = ids.shape[0]
    before = server["leaves"]
    leaves = {n: store[n][ids] if n in store else jnp.broadcast_to(before[n], (c,) + before[n].shape)
              for n in part.names}
    return dict(part.tree(leaves), step=jnp.broadcast_to(server["step"], (c,)))


def make_round(task, tx, cfg, part: Partition, placement: Placement, sizes: dict):
    """round(server, store, data, weights, active, constants) -> (server, store, metrics): one
    round, jittable (server and store donated)."""
    f = cfg.federated
    E, C, chunk, R = f.local_steps, sizes["clients_per_round"], sizes["chunk"], sizes["rows"]
    local_train = local_training(make_train_step(task, tx, cfg), cfg, R)
    n_chunks = -(-C // chunk)
    K = max(task.num_experts, 1)
    dp = f.dp_clip > 0
    sent = message_names(part, dp)
    shared_names = [n for n in sent if n in part.where(("shared",))]
    group_names = [n for n in sent if n in part.where(("group",))]
    global_names = part.where(("global",))
    private_params = part.where(("private",), ("param",))
    private_scale = {n: f.user_embedding_lr_scale if is_user_embedding(n.split(".")) else f.private_lr_scale
                     for n in private_params}
    is_param = {n: k == "param" for n, k in zip(part.names, part.kinds)}
    server_opt = ServerOptimizer(f, part)
    data_devices = placement.mesh.shape["data"]
    constrain = data_devices > 1 and chunk % data_devices == 0

    def on_clients(tree):  # the leading client axis over the mesh's "data" axis
        return jax.lax.with_sharding_constraint(tree, placement.batch) if constrain else tree

    def round_fn(server, store, data, weights, active, constants):
        key = jax.random.wrap_key_data(server["rng"])
        key, k_sample, k_local, k_noise = jax.random.split(key, 4)
        dummy = next(iter(store.values())).shape[0] - 1 if store else 0  # the store's spare row
        chosen = jax.random.choice(k_sample, active, (C,), replace=False)
        ids = jnp.concatenate([chosen, jnp.full((n_chunks * chunk - C,), dummy, chosen.dtype)]).reshape(n_chunks, chunk)
        valid = (jnp.arange(n_chunks * chunk) < C).reshape(n_chunks, chunk)
        if task.num_experts:
            constants = dict(constants, route_share=server["route_share"])
        before = server["leaves"]

        def chunk_body(carry, xs):
            acc, store = carry
            ids_c, valid_c = xs
            rows_of = jnp.minimum(ids_c, weights.shape[0] - 1)  # a padding slot trains on a real client, weight 0
            w = weights[rows_of] * valid_c
            state = on_clients(client_states(part, server, store, ids_c))
            state_leaves = part.leaves({"params": state["params"], "opt_state": state["opt_state"]})
            rows = on_clients(jax.tree.map(lambda x: x[rows_of], data))
            keys = jax.vmap(lambda c: jax.random.fold_in(k_local, c))(ids_c)
            final, metrics = jax.vmap(local_train, in_axes=(0, 0, None, 0))(state, rows, constants, keys)
            after = part.leaves({"params": final["params"], "opt_state": final["opt_state"]})
            # θ_p ← θ_p + s·(θ_p' − θ_p): the private step scaled (s of each private leaf: private_scale)
            after.update({n: state_leaves[n] + private_scale[n] * (after[n] - state_leaves[n])
                          for n in private_params if private_scale[n] != 1})
            # The route each client's local training started from (for one local step, the expert it
            # trained): its parameters at the round's start and, with route_on "history", its rows.
            routes = jax.vmap(task.route)(state["params"], rows)
            on = jax.nn.one_hot(routes, K) * valid_c[:, None]                  # [chunk, K]
            delta = {n: after[n] - before[n] for n in shared_names + group_names}
            if dp:  # clip each client's parameter update: shared leaves + its routed expert's
                sq = sum(jnp.sum(jnp.square(delta[n]).reshape(chunk, -1), 1)
                         for n in shared_names if is_param[n])
                sq = sq + sum(jnp.sum(jnp.square(delta[n][jnp.arange(chunk), routes]).reshape(chunk, -1), 1)
                              for n in group_names if is_param[n])
                scale = jnp.minimum(1.0, f.dp_clip / jnp.maximum(jnp.sqrt(sq), 1e-12))
                delta = {n: d * scale.reshape((chunk,) + (1,) * (d.ndim - 1)) for n, d in delta.items()}
            wk = on * w[:, None]
            acc = {
                "shared": {n: acc["shared"][n] + jnp.tensordot(w, delta[n], 1) for n in shared_names},
                "group": {n: acc["group"][n] + jnp.einsum("ck,ck...->k...", wk, delta[n]) for n in group_names},
                "w": acc["w"] + jnp.sum(w), "w_max": jnp.maximum(acc["w_max"], jnp.max(w)),
                "wk": acc["wk"] + jnp.sum(wk, 0), "wk_max": jnp.maximum(acc["wk_max"], jnp.max(wk, 0)),
                "routed": acc["routed"] + jnp.sum(on, 0),
                "global": {n: after[n][0] for n in global_names},
                "metrics": {m: acc["metrics"][m] + jnp.sum(jnp.mean(v, 1) * valid_c) for m, v in metrics.items()},
            }
            # Private leaves back to each client's store row (padding slots write the spare row).
            store = {n: store[n].at[ids_c].set(after[n]) for n in store}
            return (acc, store), None

        metric_shapes = jax.eval_shape(lambda: local_train(
            jax.tree.map(lambda x: x[0], client_states(part, server, store, jnp.zeros((1,), jnp.int32))),
            jax.tree.map(lambda x: x[0], data), constants, k_local)[1])
        acc0 = {"shared": {n: jnp.zeros_like(before[n]) for n in shared_names},
                "group": {n: jnp.zeros_like(before[n]) for n in group_names},
                "w": jnp.zeros(()), "w_max": jnp.zeros(()), "wk": jnp.zeros(K), "wk_max": jnp.zeros(K),
                "routed": jnp.zeros(K), "global": {n: before[n] for n in global_names},
                "metrics": {m: jnp.zeros(()) for m in metric_shapes}}
        (acc, store), _ = jax.lax.scan(chunk_body, (acc0, store), (ids, valid))

        new = dict(before)
        means = {}  # the mean update Δ of each leaf of the message (DP noise added)
        noise_keys = iter(jax.random.split(k_noise, len(shared_names) + len(group_names)))
        for n in shared_names:
            means[n] = acc["shared"][n] / acc["w"]
            if dp and f.dp_noise > 0 and is_param[n]:
                std = f.dp_noise * f.dp_clip * acc["w_max"] / acc["w"]
                means[n] += jax.random.normal(next(noise_keys), means[n].shape) * std
            if not is_param[n]:
                new[n] = before[n] + means[n]
        for n in group_names:
            wk = acc["wk"].reshape((K,) + (1,) * (before[n].ndim - 1))
            means[n] = acc["group"][n] / jnp.maximum(wk, 1e-12)
            if dp and f.dp_noise > 0 and is_param[n]:
                std = f.dp_noise * f.dp_clip * acc["wk_max"] / jnp.maximum(acc["wk"], 1e-12)
                means[n] += jax.random.normal(next(noise_keys), means[n].shape) * std.reshape(wk.shape)
            if not is_param[n]:
                new[n] = jnp.where(wk > 0, before[n] + means[n], before[n])  # an expert no client used stays
        # The parameters: the server optimizer's step on the pseudo-gradient -Δ.
        stepped, opt_state = server_opt.apply(server.get("server_opt", {}), before, means, acc["wk"] > 0)
        new.update(stepped)
        new.update(acc["global"])
        share = acc["routed"] / C
        server = dict(server, leaves=new, step=server["step"] + E, round=server["round"] + 1,
                      rng=jax.random.key_data(key), route_share=share if task.num_experts else server["route_share"])
        if opt_state:
            server["server_opt"] = opt_state
        metrics = {m: v / C for m, v in acc["metrics"].items()}
        if task.num_experts:
            metrics["experts_used"] = jnp.sum(acc["routed"] > 0).astype(jnp.float32)
            metrics["route_max_share"] = jnp.max(share)
        return server, store, metrics

    return round_fn


def initial_federation(task, tx, cfg, part_sample: dict, constants: dict, num_store_rows: int):
    """(server state, client store, Partition): the shared and group leaves of one init, and each
    client's private leaves from its own key."""
    root = jax.random.key(cfg.seed)
    state = init_state(task, tx, cfg, root, part_sample, constants)
    part = Partition(task, state)
    leaves = part.leaves({"params": state["params"], "opt_state": state["opt_state"]})
    private = part.where(("private",))

    def client_private(c):
        s = init_state(task, tx, cfg, jax.random.fold_in(root, c), part_sample, constants)
        own = part.leaves({"params": s["params"], "opt_state": s["opt_state"]})
        return {n: own[n] for n in private}

    store = jax.jit(jax.vmap(client_private), compiler_options=run_once_options())(jnp.arange(num_store_rows)) if private else {}
    K = max(task.num_experts, 1)
    server = {"leaves": {n: v for n, v in leaves.items() if n not in private},
              "step": jnp.zeros((), jnp.int32), "round": jnp.zeros((), jnp.int32),
              "rng": jax.random.key_data(jax.random.fold_in(root, 2**31 - 1)),
              "route_share": jnp.full((K,), 1.0 / K, jnp.float32)}
    opt_state = ServerOptimizer(cfg.federated, part).init(server["leaves"])
    if opt_state:  # plain "sgd" keeps none (the server state, and its checkpoint, as before)
        server["server_opt"] = opt_state
    return server, store, part


def eval_params(part: Partition, server: dict, store: dict, num_clients: int):
    """The parameter tree with every private leaf stacked over the clients [num_clients, ...]
    (only the parameter leaves of ``server["leaves"]`` and ``store`` are read)."""
    params = set(part.where(kinds=("param",)))
    leaves = {n: (store[n][:num_clients] if n in store else server["leaves"][n]) if n in params else None
              for n in part.names}
    return part.tree(leaves)["params"]


def checkpoint_items(server: dict, store: dict, best: dict | None) -> dict:
    """The items of one checkpoint: "server" (the server state), "clients" (the client store, when
    clients hold private leaves) and, with ``train.select_metric``, "best" (the best evaluation's
    server leaves, score and round) and "best_clients" (its client store)."""
    items = {"server": server, "clients": store}
    if best is not None:
        items.update(best=best["server"], best_clients=best["clients"])
    return {k: v for k, v in items.items() if v}


def save(mngr, round_: int, server: dict, store: dict, best: dict | None = None) -> None:
    """``checkpoint_items`` as the items of one checkpoint (written together: a kill never splits them)."""
    items = {k: ocp.args.StandardSave(v) for k, v in checkpoint_items(server, store, best).items()}
    mngr.save(round_, args=ocp.args.Composite(**items), force=True)


def restore_latest(mngr, server: dict, store: dict, best: dict | None = None):
    """(server, store, best, round) of the newest complete checkpoint, or (None, None, None, None);
    ``best`` None when the run keeps no best copy."""
    step = mngr.latest_step()
    if step is None:
        return None, None, None, None
    try:
        items = {k: ocp.args.StandardRestore(checkpoint.abstract_like(v))
                 for k, v in checkpoint_items(server, store, best).items()}
        got = mngr.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, OSError, KeyError) as e:
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            raise
        raise WorkdirError(f"cannot restore the federation's checkpoint of round {step} in {mngr.directory}: it does "
                           f"not fit this run or its files are damaged ({str(e).splitlines()[0][:300]}); use a new "
                           f"--workdir") from e
    if best is not None:
        best = {"server": got["best"], "clients": got["best_clients"] if store else {}}
    return got["server"], got["clients"] if store else {}, best, step


def best_of(part: Partition, server: dict, store: dict, value, round_) -> dict:
    """The best-so-far record {"server": {"leaves", "value", "round"}, "clients"}: the parameter
    leaves of ``server`` and ``store`` (what the ranking reads; no optimizer state), as given."""
    params = set(part.where(kinds=("param",)))
    return {"server": {"leaves": {n: v for n, v in server["leaves"].items() if n in params},
                       "value": value, "round": round_},
            "clients": {n: v for n, v in store.items() if n in params}}


def keep_best(part: Partition, server: dict, store: dict, value: float, round_: int) -> dict:
    """``best_of`` the federation as it is now, copied (new buffers: the rounds donate theirs)."""
    return jax.tree.map(jnp.copy, best_of(part, server, store, jnp.asarray(value, jnp.float32),
                                          jnp.asarray(round_, jnp.int32)))


def run(cfg, workdir: str) -> dict:
    """Trains (or resumes) the federated run of ``cfg`` in ``workdir``; returns the summary."""
    with contextlib.ExitStack() as scope:
        return _run(cfg.copy_and_resolve_references(), workdir, scope)


def _run(cfg, workdir: str, scope: contextlib.ExitStack) -> dict:
    # ------------------------------------------------------------------ config, workdir, task
    config_lib.validate(cfg, defaults.CONSTRAINTS, defaults.cross_key_problems)
    f = cfg.federated
    cfg.train.steps = f.rounds * f.local_steps  # the clients' optimizer schedule, saved with the config
    if jax.process_count() > 1:
        raise ConfigError("the federated trainer runs in one process (its devices shard the clients)")
    resuming = open_workdir(cfg, workdir, scope)
    t_start = time.time()
    task = make_task(cfg, cfg.data.cache_dir or os.path.join(workdir, "cache"), log)
    if not hasattr(task, "client_data"):
        raise ConfigError(f"config task={cfg.task!r} has no clients; the federated family needs task='federated'")
    check_data(workdir, data_fingerprint(cfg.data.get("path", ""), examples_fingerprint(task.examples)), resuming,
               cfg.train.finetune_changed_data, log)
    save_config(cfg, workdir)
    log(f"schedule: {f.rounds:,} rounds × {f.local_steps} local steps → train.steps={cfg.train.steps:,} "
        + (f"(each client's AdamW schedule, lr {cfg.train.lr:g})" if f.client_optimizer == "adamw"
           else f"(clients: SGD at lr {cfg.train.lr:g})")
        + f"; server optimizer {f.server_optimizer}, lr {f.server_lr:g}"
        + (f" (warm-up {f.server_warmup_rounds:,} rounds, cosine)" if f.server_schedule == "cosine" else "")
        + (f", β1 {f.server_momentum:g}" if f.server_optimizer != "sgd" else "")
        + (f", β2 {f.server_b2:g}, τ {f.server_tau:g}" if f.server_optimizer in ("adam", "yogi") else "")
        + (f"; group experts at {f.group_lr_scale:g} × its lr" if f.group_lr_scale != 1 else ""))

    # ------------------------------------------------------------------ clients, mesh
    data, weights = task.client_data()
    N = task.num_clients
    active = np.flatnonzero(weights > 0).astype(np.int32)
    C = max(1, min(len(active), round(f.client_fraction * len(active))))
    placement = Placement(min(f.clients_per_chunk, C))
    scope.enter_context(jax.set_mesh(placement.mesh))
    devices = placement.mesh.shape["data"]
    chunk = chunk_size(C, f.clients_per_chunk, devices)
    store_rows = -(-(N + 1) // devices) * devices  # + a spare row the padding slots of a round write
    sizes = {"clients_per_round": C, "chunk": chunk, "rows": next(iter(data.values())).shape[1]}
    constants = {k: jax.device_put(np.asarray(v), placement.replicated) for k, v in task.constants.items()}
    data = {k: jax.device_put(v, placement.replicated) for k, v in data.items()}
    weights_d = jax.device_put(weights, placement.replicated)
    active_d = jax.device_put(active, placement.replicated)
    log(f"clients: {N:,} ({len(active):,} hold training rows, up to {sizes['rows']} rows each); {C:,} per round "
        f"({f.client_fraction:g} of those with data), {chunk} at a time under vmap on {devices} "
        f"{jax.devices()[0].platform} device(s); {f.local_steps} local steps of batch "
        f"{min(f.local_batch, sizes['rows'])}")

    # ------------------------------------------------------------------ server, client store
    tx = client_optimizer(cfg, task)
    sample = {k: np.asarray(v[:1]) for k, v in task.examples.items() if k in task.model_keys}
    server, store, part = initial_federation(task, tx, cfg, sample, task.constants, store_rows)
    server = placement.replicate(server)
    store = jax.device_put(store, jax.tree.map(lambda _: placement.batch, store))
    down, up = message_bytes(part, server["leaves"], task.num_experts, dp=f.dp_clip > 0)
    private_bytes = nbytes(store) // max(store_rows, 1)
    log(f"model: {sum(np.prod(server['leaves'][n].shape) for n in part.where(kinds=('param',)) if n in server['leaves']):,} "
        f"server parameters ({len(part.where(('group',), ('param',)))} group-expert leaves of "
        f"{max(task.num_experts, 1)} experts); {private_bytes:,} private bytes per client (parameters and moments), "
        f"{nbytes(store) / 2**20:.1f} MiB for all; message per client: {down:,} bytes down, {up:,} up")
    mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), cfg.train.keep_checkpoints)
    scope.callback(mngr.wait_until_finished)
    select = cfg.train.select_metric
    best = None
    if select:  # the restore's template: shapes only, nothing copied
        scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=placement.replicated)
        best = best_of(part, server, store, scalar(jnp.float32), scalar(jnp.int32))
        latest = mngr.latest_step()
        if latest is not None and not os.path.isdir(os.path.join(mngr.directory, str(latest), "best")):
            log(f"the checkpoint of round {latest} holds no best-so-far copy (written without train.select_metric); "
                f"the selection starts from the evaluations after it")
            best = None
    restored = restore_latest(mngr, server, store, best)
    if restored[0] is not None:
        server, store, best, _ = restored
        log(f"resumed from the checkpoint of round {restored[3]}")
    if select and (best is None or restored[0] is None):
        best = keep_best(part, server, store, -np.inf, 0)  # -inf: no evaluation yet

    # ------------------------------------------------------------------ the round, compiled once
    t0 = time.time()
    round_fn = make_round(task, tx, cfg, part, placement, sizes)
    round_step = jax.jit(round_fn, donate_argnums=(0, 1)).lower(
        checkpoint.abstract_like(server), checkpoint.abstract_like(store), data, weights_d, active_d,
        constants).compile()
    log(f"round compiled in {time.time() - t0:.1f}s")

    def evaluate(server, store, done, writer, best):
        """Writes the validation metrics; returns the best-so-far copy (``train.select_metric``)."""
        in_flight.drain()  # the evaluation's timing counts the evaluation, not the queued rounds
        ev = task.evaluate(eval_params(part, server, store, N), constants)
        writer.write(done, "eval", ev)
        line = f"eval at round {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items() if k.endswith("@10"))
        if select:
            if checkpoint.improves(ev, select, best["server"]["value"]):
                best = keep_best(part, server, store, ev[select], done)
            line += f" (best {select} so far {float(best['server']['value']):.4f}, round {int(best['server']['round'])})"
        log(line)
        return best

    # ------------------------------------------------------------------ rounds
    rounds = f.rounds
    start = int(server["round"])
    writer = MetricsWriter(workdir, resume_step=start)
    progress = Progress(rounds, "federated", "rounds", log=log, initial=start, every_s=float("inf"),
                        bar=bool(cfg.train.progress) and on_terminal())
    halted = False
    in_flight = InFlight()  # rounds run at most two ahead of the host, so progress counts finished rounds
    t_last, round_last = time.time(), start
    for r in range(start, rounds):
        server, store, metrics = round_step(server, store, data, weights_d, active_d, constants)
        in_flight.add(metrics)
        done = r + 1
        progress.update(1)
        if done % cfg.train.log_every == 0 or done == rounds:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            bad = [k for k, v in m.items() if not np.isfinite(v)]
            if bad:
                raise NonFiniteError(f"round {done}: non-finite {bad}; no checkpoint written for this round")
            now = time.time()
            m["clients_per_s"] = (done - round_last) * C / max(now - t_last, 1e-9)
            m.update(clients=C, bytes_down=down * C, bytes_up=up * C)
            t_last, round_last = now, done
            writer.write(done, "train", m)
            if progress.bar is None:
                log(progress.line(f"loss {m['loss']:.4f}, {m['clients_per_s']:,.1f} clients/s"
                                  + (f", {int(m['experts_used'])} experts used (max share {m['route_max_share']:.2f})"
                                     if 'experts_used' in m else "")))
        if done % cfg.train.eval_every == 0 or done == rounds:
            best = evaluate(server, store, done, writer, best)
        if checkpoint.due(done, rounds, cfg.train):
            checkpoint.check_finite(checkpoint_items(server, store, best), done, mngr.latest_step())
            save(mngr, done, server, store, best)
        if done == cfg.train.halt_after_step:
            halted = True
            break
    mngr.wait_until_finished()
    progress.close()
    if halted:
        return checkpoint.halted(cfg.train, "round", writer, log)

    # ------------------------------------------------------------------ report
    summary = {}
    if select:  # rank with the best evaluation's parameters
        server, store = best["server"], best["clients"]
        summary["selected"] = {"metric": select, "value": float(best["server"]["value"]),
                               "step": int(best["server"]["round"])}  # a round, as summary["steps"] counts them
    summary["test"] = task.report(eval_params(part, server, store, N), constants)
    if task.data_warnings:
        summary["data_warnings"] = task.data_warnings
    summary.update(steps=rounds, rounds=rounds, local_steps=f.local_steps, clients=N, clients_per_round=C,
                   bytes_down_per_round=down * C, bytes_up_per_round=up * C, private_bytes_per_client=private_bytes,
                   wall_seconds=time.time() - t_start)
    if distributed.is_main():
        files.write_json(os.path.join(workdir, "summary.json"), summary)
        writer.write(rounds, "final", {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        report.plot_run(os.path.join(workdir, "training.png"), os.path.join(workdir, "metrics.jsonl"),
                        title=f"{os.path.basename(os.path.abspath(workdir))}: federated {cfg.model.variant}, "
                              f"{rounds:,} rounds × {C:,} clients, seed {cfg.seed}", test=summary.get("test"),
                        selected=summary.get("selected"),
                        x_label="round", loss_title="clients' training loss (mean over local steps)")
    writer.close()
    log(report.summary_text(summary, workdir, "user"))
    return summary
