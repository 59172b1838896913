"""Federated sequential recommendation (MRFF, arXiv 2412.16969): the task the federated trainer
(``u2qt/train/federated.py``) runs, judged by the leave-one-out full-ranking protocol every
recommender here shares (``LeaveOneOut``).

Data (``data.reader``): an LC-Rec directory (Amazon Beauty, ...) or MovieLens-1M's GroupLens
files, read as EfficientRec reads them. Training rows: SASRec's (inputs s[:-1] → targets s[1:] of
the user's training items in windows of ``data.max_history``): the last window of each user, and
with ``data.windows`` > 1 up to that many of its windows, each ending where the next begins (0: all;
for histories longer than the window, which the model would otherwise never train on), each row
with the index of the client that holds it (``client``). Clients (``federated.grouping``):
  - "user"       every user is a client (the cross-device setting; the default)
  - "random"     users in seeded random groups of ``federated.group_size`` (cross-silo)
  - "attribute"  users grouped by the value of the user attribute ``federated.group_attribute``
                 (MovieLens-1M: gender, age, occupation, zip, zip3)

Models (``model.variant``):
  - "mrff"    ``u2qt/models/mrff.py``: group experts routed per client + a private user expert
              and user embedding (the private parameters stay on the client)
  - "sasrec"  plain SASRec, every parameter shared: FedAvg SASRec under the federated trainer,
              centralized SASRec under the ordinary loop (a config without ``federated``)
Loss: next-item full-softmax cross-entropy over all items at every position with a target, plus
for MRFF the balance loss α·K·Σ_k f_k·p_k (α = ``loss.balance_weight``; f = the server's route
shares of the previous round, ``constants["route_share"]``).

Evaluation: each user's cases are scored with the parameters of the user's client (its private
ones included): ``ranks`` takes the parameters with every private leaf stacked over clients
[num_clients, ...] (the shared and group ones as they are). ``eval.private_experts`` "off" ranks
with MRFF's private experts zeroed (they still train); MRFF's report adds the test and validation
metrics of the other setting ("private_off_*" or "private_on_*"), the measure of what they add.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from u2qt.data.movielens import read_movielens
from u2qt.data.sequences import leave_one_out, next_item_examples
from u2qt.errors import ConfigError, DataError
from u2qt.eval import ranking
from u2qt.losses import item_softmax_loss
from u2qt.models.mrff import MRFF, balance_loss, mrff_scores, parameter_role, route, without_private_experts
from u2qt.models.sasrec import SASRec, sasrec_loss, sasrec_scores
from u2qt.tasks.efficientrec import read_interactions
from u2qt.tasks.recommender import LeaveOneOut

VARIANTS = ("mrff", "sasrec")
GROUPINGS = ("user", "random", "attribute")


def key_names(path) -> tuple[str, ...]:
    """A pytree key path as plain names (dict keys, attribute names, sequence indices)."""
    out = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                out.append(str(getattr(entry, attr)))
                break
    return tuple(out)


def group_users(num_users: int, grouping: str, group_size: int = 1, seed: int = 0,
                attribute: np.ndarray | None = None) -> np.ndarray:
    """The client index [U] of every user: itself, a seeded random group of ``group_size``, or the
    rank of its ``attribute`` value among the sorted distinct values."""
    if grouping == "user":
        return np.arange(num_users, dtype=np.int32)
    if grouping == "random":
        order = np.random.default_rng(seed).permutation(num_users)
        client = np.empty(num_users, np.int32)
        client[order] = np.arange(num_users) // group_size
        return client
    if grouping == "attribute":
        _, client = np.unique(np.asarray(attribute).astype(str), return_inverse=True)
        return client.astype(np.int32)
    raise ConfigError(f"config federated.grouping={grouping!r}; known: {GROUPINGS}")


class FederatedRecTask(LeaveOneOut):
    """SASRec or MRFF with a client index per row; capabilities: Evaluates."""
    name = "federated"
    model_keys = ("inputs", "targets", "client")
    row_kind = "user"

    def __init__(self, cfg, cache_dir: str, log=print):
        m, d = cfg.model, cfg.data
        self.cfg, self.log = cfg, log
        if m.variant not in VARIANTS:
            raise ConfigError(f"config model.variant={m.variant!r}; known: {VARIANTS}")
        self.federated = "federated" in cfg
        if m.variant == "mrff" and not self.federated:
            raise ConfigError("config model.variant='mrff' needs the federated trainer (a config with the "
                              "federated family): its private parameters are per client")
        data, self.data_warnings = read_interactions(d, log)
        self.data = data
        self._set_split(leave_one_out(data.sequences), np.zeros(0, np.int32))
        U = len(data.user_ids)
        self.client_of_user = self._clients(cfg, U)
        self.num_clients = int(self.client_of_user.max()) + 1 if U else 0
        rows = next_item_examples(self.split.train, d.max_history, d.windows)
        keep = (rows["targets"] > 0).any(1)
        self.row_user = rows["sequence"][keep]
        self.examples = {"inputs": rows["inputs"][keep], "targets": rows["targets"][keep],
                         "client": self.client_of_user[self.row_user]}
        if not len(self.row_user):
            raise DataError(f"{d.path}: no user has the 2 training items a training row needs")
        kw = dict(num_items=data.num_items, d_model=m.dim, num_layers=m.seq_layers, num_heads=m.num_heads,
                  dropout=m.dropout, max_len=d.max_history)
        if m.variant == "mrff":
            self.model = MRFF(experts=m.experts, private_hidden=m.private_hidden, gate_hidden=m.gate_hidden,
                              expert_start=m.expert_start, route_on=m.route_on, expert_base=m.expert_base, **kw)
            self.num_experts = m.experts
            self.constants = {"route_share": np.full(m.experts, 1.0 / m.experts, np.float32)}
        else:
            self.model = SASRec(mode="id", **kw)
            self.num_experts = 0
            self.constants = {}
        self._scores = jax.jit(self._score_rows)
        self.private_experts = cfg.eval.get("private_experts", "on") == "on"
        active = np.unique(self.examples["client"]).size
        log(f"data: {data.num_items:,} items, {U:,} users, {len(self.row_user):,} training rows in "
            f"{active:,} clients with data ({self.num_clients:,} clients, grouping "
            f"{cfg.federated.grouping if self.federated else 'none: centralized'}), {len(self.valid_cases):,} "
            f"validation / test cases; model {m.variant}")

    def _clients(self, cfg, num_users: int) -> np.ndarray:
        if not self.federated:
            return np.zeros(num_users, np.int32)
        f = cfg.federated
        attribute = None
        if f.grouping == "attribute":
            if cfg.data.reader != "movielens":
                raise ConfigError(f"config federated.grouping='attribute' needs user attributes; data.reader="
                                  f"{cfg.data.reader!r} has none (use 'random')")
            users = read_movielens(cfg.data.path)[0].users.set_index("user_id")
            if f.group_attribute not in users.columns:
                raise ConfigError(f"config federated.group_attribute={f.group_attribute!r} is not a user attribute; "
                                  f"known: {sorted(users.columns)}")
            attribute = users[f.group_attribute].reindex(self.data.user_ids).to_numpy()
        return group_users(num_users, f.grouping, f.group_size, cfg.seed, attribute)

    # -------------------------------------------------------------- core
    def init(self, key, sample, constants):
        return self.model.init(key, sample["inputs"][:1])["params"]

    def roles(self, params):
        """The tree of ``params`` with each leaf's role: "shared", "group" or "private"."""
        return jax.tree_util.tree_map_with_path(lambda path, _: parameter_role(key_names(path)), params)

    def route(self, params, batch) -> jax.Array:
        """The expert k* a client's parameters (and, with model.route_on "history", its rows
        ``batch``) route it to (0 without experts)."""
        if not self.num_experts:
            return jnp.zeros((), jnp.int32)
        items = batch["inputs"] if self.model.route_on == "history" else None
        return route(self.model.apply({"params": params}, items, method=MRFF.route_probs))[0].astype(jnp.int32)

    def loss(self, params, batch, constants, key, step):
        key = jax.random.fold_in(key, batch["client"][0])  # each client its own dropout
        if not self.num_experts:
            rec = sasrec_loss(params, batch, self.model, dropout_rng=key)
            return rec, {"metrics": {"loss": rec, "rec": rec}}
        hidden, probs = self.model.apply({"params": params}, batch["inputs"], train=True, rngs={"dropout": key})
        table = self.model.apply({"params": params}, method=MRFF.item_table)
        targets = batch["targets"].reshape(-1, 1)
        valid = (targets > 0).astype(jnp.float32)
        nll = item_softmax_loss(hidden.reshape(-1, hidden.shape[-1]), table, targets, valid)
        rec = jnp.sum(nll) / jnp.maximum(jnp.sum(valid), 1.0)
        bal = balance_loss(probs, constants["route_share"], self.cfg.loss.balance_weight)
        loss = rec + bal
        return loss, {"metrics": {"loss": loss, "rec": rec, "balance": bal}}

    # -------------------------------------------------------------- Evaluates
    def _score_rows(self, params, clients, history):
        """Scores [b, I + 1]: row j with the parameters of client clients[j] (the private leaves of
        ``params`` stacked over clients)."""
        roles = self.roles(params)
        rows = jax.tree.map(lambda r, x: x[clients] if r == "private" else x, roles, params)
        axes = jax.tree.map(lambda r: 0 if r == "private" else None, roles)
        fn = mrff_scores if self.num_experts else sasrec_scores
        return jax.vmap(lambda p, h: fn(p, h[None], self.model)[0], in_axes=(axes, 0))(rows, history)

    def report(self, params, constants) -> dict:
        """The shared report; for MRFF also the test and validation metrics with the other setting of
        ``eval.private_experts`` ("private_off_*" / "private_off_valid_*" when the ranking uses the
        private experts, "private_on_*" when it zeroes them): what the private experts add, and the
        validation numbers to choose the setting by."""
        out = super().report(params, constants)
        if self.num_experts:
            other = "off" if self.private_experts else "on"
            for prefix, cases in (("", self.test_cases), ("valid_", self.valid_cases)):
                ranks = self.ranks(params, constants, cases, f"{'validation' if prefix else 'test'}, private experts {other}",
                                   private_experts=not self.private_experts)
                out.update({f"private_{other}_{prefix}{k}": v for k, v in ranking.metrics_from_ranks(ranks).items()})
        return out

    def ranks(self, params, constants, cases: ranking.EvalCases, desc: str = "evaluation",
              private_experts: bool | None = None) -> np.ndarray:
        """Ranks of ``cases``, each user with its client's parameters; MRFF's private experts zeroed
        when ``private_experts`` (default: ``eval.private_experts``) is off."""
        if self.num_experts and not (self.private_experts if private_experts is None else private_experts):
            params = without_private_experts(params)
        clients = jnp.asarray(self.client_of_user)
        return ranking.evaluate_ranks(lambda b: self._scores(params, clients[b["user"]], b["history"]), cases,
                                      self.cfg.eval.batch_size, log=self.log, desc=desc)

    # -------------------------------------------------------------- the clients' data
    def client_data(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each client's training rows, padded: ({key: [num_clients, R, ...]} with R the most rows
        a client holds (padding rows have no target), [num_clients] its count of next-item
        targets, the weight of its update)."""
        client = self.examples["client"]
        counts = np.bincount(client, minlength=self.num_clients)
        R = max(int(counts.max()), 1)
        slot = np.zeros(len(client), np.int64)
        order = np.argsort(client, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot[order] = np.arange(len(client)) - starts[client[order]]
        out = {}
        for k in self.model_keys:
            v = self.examples[k]
            block = np.zeros((self.num_clients, R) + v.shape[1:], v.dtype)
            block[client, slot] = v
            out[k] = block
        out["client"] = np.broadcast_to(np.arange(self.num_clients, dtype=np.int32)[:, None],
                                        (self.num_clients, R)).copy()
        weights = np.bincount(client, weights=(self.examples["targets"] > 0).sum(1), minlength=self.num_clients)
        return out, weights.astype(np.float32)
