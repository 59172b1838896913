"""MRFF (arXiv 2412.16969, AAAI-25): multifaceted user modelling for federated recommendation.
A SASRec backbone (``u2qt/models/sasrec.py``: the same item representation, causal mask, position
embeddings counted from the right and item logits) whose every block's feed-forward is the sum of
  - a group expert: K experts shared across clients; a gating network G routes each CLIENT top-1
    from its private user embedding u (every row of a client goes to the same expert), and
  - a private user expert: a small feed-forward that belongs to one client and never leaves it.

The equations, in one place (per block l, pre-LayerNorm, residual):
    p = G(u) = softmax(MLP_gate(u))                         route probabilities  [K]
    k* = argmax_k p_k                                       top-1 route of the client
    h = x + Attn(LN_1(x))
    y = LN_2(h)
    x' = h + p_k* · E^g_k*(y) + E^p(y)                      group expert + private user expert
    L_bal = α · K · Σ_k f_k · p_k                           balance loss
where E(y) = W_2 gelu(W_1 y + b_1) + b_2, and f_k is the share of the clients routed to expert k in
the previous round (a constant here: the server's count, ``route_share``). The scale p_k* lets the
recommendation loss train the gate (Switch-Transformer style). E^p's W_2 starts at zero: a client's
private expert adds nothing until the client trains it. The K group experts start as copies of one
draw (``expert_start``; the reference code's experts are one module), so a fresh MRFF computes the
same function for every client up to p_k*. (From a random start each client's expert
added its own O(1) vector to a residual stream whose item embeddings start at 0.02, noise the
shared layers could not learn away, and MRFF lagged FedAvg SASRec from the first rounds.)

Two options that depart from the paper (config ``model.route_on``, ``model.expert_base``; the
defaults are the paper's):
    route_on "history":  p = G(LN(mean_t sg(e_{i_t})))    the gate reads the mean embedding of the
                         client's own items (stop-gradient), not a private u: routes that follow
                         what the client watched, and no user embedding
    expert_base "shared": x' = h + E^s(y) + p_k* · E^g_k*(y) + E^p(y)   one shared feed-forward E^s
                         trained by every client; the group experts start at zero (W_2 = 0), as
                         deltas over it that only their routed clients train

Which parameters are whose (``parameter_role``): "private" = the user embedding u and every block's
private expert; "group" = the stacked group experts (expert axis first); "shared" = everything
else (item and position embeddings, attention, LayerNorms, the gate, E^s). A federated trainer keeps
private ones on the client, averages each group expert over the clients routed to it, and averages
the shared ones over all clients (``u2qt/train/federated.py``).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from u2qt.models.sasrec import attention_mask, item_logits, represent_items
from u2qt.nn.layers import MLP, FeedForward

USER_EMBEDDING, PRIVATE_EXPERT = "user_embedding", "private_expert"  # the private parameters' names
PRIVATE_NAMES = (USER_EMBEDDING, PRIVATE_EXPERT)
GROUP_EXPERT = "group_expert"
GROUP_NAMES = (GROUP_EXPERT,)
SHARED_EXPERT = "shared_expert"  # E^s of expert_base "shared" (a shared parameter)
ROLES = ("shared", "group", "private")


def parameter_role(path: tuple[str, ...]) -> str:
    """The role of the parameter at ``path`` (its key names): "private", "group" or "shared"."""
    if any(name in PRIVATE_NAMES for name in path):
        return "private"
    if any(name in GROUP_NAMES for name in path):
        return "group"
    return "shared"


def is_user_embedding(path) -> bool:
    """Whether the parameter at ``path`` (its key names) is the private user embedding u, the gate's
    input: the one private leaf that decides the client's route (its step: federated.user_embedding_lr_scale)."""
    return USER_EMBEDDING in tuple(path)


def without_private_experts(params: dict) -> dict:
    """``params`` with every block's private user expert zeroed (E^p(y) = 0·gelu(0) + 0 = 0): MRFF
    without its private experts, the ablation that shows what they add. Works on stacked (per-client)
    leaves as on one client's."""
    return {k: jax.tree.map(jnp.zeros_like, v) if k == PRIVATE_EXPERT
            else without_private_experts(v) if isinstance(v, dict) else v for k, v in params.items()}


def route(probs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Top-1 route: (k* = argmax p, p_k*) of the route probabilities p [K]."""
    k = jnp.argmax(probs, axis=-1)
    return k, jnp.take_along_axis(probs, k[..., None], -1)[..., 0]


def balance_loss(probs: jax.Array, share: jax.Array, alpha: float) -> jax.Array:
    """L_bal = α · K · Σ_k f_k · p_k (f: share of clients on each expert, a constant)."""
    return alpha * probs.shape[-1] * jnp.sum(jax.lax.stop_gradient(share) * probs, axis=-1)


def expert_ffn(w: dict, y: jax.Array, dropout: nn.Dropout, deterministic: bool) -> jax.Array:
    """E(y) = W_2 gelu(W_1 y + b_1) + b_2 of one expert's weights."""
    h = dropout(nn.gelu(y @ w["w_in"] + w["b_in"]), deterministic=deterministic)
    return h @ w["w_out"] + w["b_out"]


EXPERT_STARTS = ("copies", "independent")
ROUTE_INPUTS = ("user", "history")  # what the gate reads: the private u | the client's items
EXPERT_BASES = ("none", "shared")  # the group experts alone | deltas over a shared feed-forward E^s


def copies_init(init):
    """An initializer of [K, ...] that draws one [...] from ``init`` and repeats it K times."""
    return lambda key, shape, dtype=jnp.float32: jnp.broadcast_to(init(key, shape[1:], dtype), shape)


class GroupExperts(nn.Module):
    """K feed-forward experts stacked on a leading axis; only the routed one is computed. They start
    as K copies of one feed-forward (``start`` "copies") or each from its own draw ("independent")."""
    experts: int
    dim: int
    hidden: int
    dropout: float = 0.0
    start: str = "copies"
    zero_out: bool = False  # W_2 starts at zero: the experts add nothing until trained (deltas)

    @nn.compact
    def __call__(self, y, k, scale, deterministic: bool):
        K, d, h = self.experts, self.dim, self.hidden
        if self.start not in EXPERT_STARTS:
            raise ValueError(f"expert_start {self.start!r} is not one of {EXPERT_STARTS}")
        init = (copies_init(nn.initializers.lecun_normal()) if self.start == "copies"
                else nn.initializers.lecun_normal(batch_axis=(0,)))
        out_init = nn.initializers.zeros if self.zero_out else init
        w = {"w_in": self.param("w_in", init, (K, d, h)), "b_in": self.param("b_in", nn.initializers.zeros, (K, h)),
             "w_out": self.param("w_out", out_init, (K, h, d)), "b_out": self.param("b_out", nn.initializers.zeros, (K, d))}
        chosen = jax.tree.map(lambda a: a[k], w)  # a dynamic slice: the gradient reaches expert k* only
        return scale * expert_ffn(chosen, y, nn.Dropout(self.dropout), deterministic)


class MRFFBlock(nn.Module):
    dim: int
    num_heads: int
    experts: int
    private_hidden: int
    dropout: float = 0.0
    expert_start: str = "copies"
    expert_base: str = "none"

    @nn.compact
    def __call__(self, x, k, scale, mask, deterministic: bool):
        if self.expert_base not in EXPERT_BASES:
            raise ValueError(f"expert_base {self.expert_base!r} is not one of {EXPERT_BASES}")
        based = self.expert_base == "shared"
        h = nn.LayerNorm()(x)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.dim,
                                            dropout_rate=self.dropout, deterministic=deterministic)(h, h, mask=mask)
        x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
        y = nn.LayerNorm()(x)
        group = GroupExperts(self.experts, self.dim, 4 * self.dim, self.dropout, self.expert_start,
                             zero_out=based, name=GROUP_EXPERT)(y, k, scale, deterministic)
        private = FeedForward(self.dim, self.private_hidden, self.dropout, zero_out=True,
                              name=PRIVATE_EXPERT)(y, deterministic)
        if based:
            group = group + FeedForward(self.dim, 4 * self.dim, self.dropout, name=SHARED_EXPERT)(y, deterministic)
        return x + nn.Dropout(self.dropout)(group + private, deterministic=deterministic)


class MRFF(nn.Module):
    """Hidden states [B, T, d] of one client's left-padded item sequences [B, T] (T <= max_len),
    with the client's route probabilities p [K]. Items are ID embeddings (SASRec mode "id")."""
    num_items: int
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    experts: int = 4
    private_hidden: int = 16
    gate_hidden: int = 32
    expert_start: str = "copies"
    route_on: str = "user"
    expert_base: str = "none"

    def setup(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if self.route_on not in ROUTE_INPUTS:
            raise ValueError(f"route_on {self.route_on!r} is not one of {ROUTE_INPUTS}")
        init = nn.initializers.normal(0.02)
        d = self.d_model
        self.id_embedding = self.param("id_embedding", init, (self.num_items + 1, d))
        self.position_embedding = self.param("position_embedding", init, (self.max_len, d))
        if self.route_on == "user":
            self.user_embedding = self.param(USER_EMBEDDING, nn.initializers.normal(1.0), (d,))
        else:
            self.route_norm = nn.LayerNorm()
        self.gate = MLP((self.gate_hidden, self.experts))
        self.blocks = [MRFFBlock(d, self.num_heads, self.experts, self.private_hidden, self.dropout, self.expert_start,
                                 self.expert_base) for _ in range(self.num_layers)]
        self.input_dropout = nn.Dropout(self.dropout)
        self.final_norm = nn.LayerNorm()

    def route_probs(self, items: jax.Array | None = None) -> jax.Array:
        """p = G(u) [K]; with route_on "history", p = G(LN(mean of the embeddings of the client's
        items [B, T], every row together, padding 0 left out; stop-gradient)): one route per client."""
        if self.route_on == "user":
            return jax.nn.softmax(self.gate(self.user_embedding))
        if items is None:
            raise ValueError("route_on 'history' routes a client on its items: pass them to route_probs")
        valid = (items > 0)[..., None].astype(jnp.float32)
        e = jax.lax.stop_gradient(represent_items(items, "id", self.id_embedding)) * valid
        mean = jnp.sum(e.reshape(-1, e.shape[-1]), 0) / jnp.maximum(jnp.sum(valid), 1.0)
        return jax.nn.softmax(self.gate(self.route_norm(mean)))

    def item_table(self) -> jax.Array:
        return represent_items(jnp.arange(self.num_items + 1), "id", self.id_embedding)

    def __call__(self, items: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        length = items.shape[-1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        probs = self.route_probs(items)
        k, scale = route(probs)
        valid = (items > 0)[..., None]
        x = represent_items(items, "id", self.id_embedding) * self.d_model ** 0.5
        x = (x + self.position_embedding[self.max_len - length:]) * valid
        x = self.input_dropout(x, deterministic=not train)
        mask = attention_mask(items)
        for block in self.blocks:
            x = block(x, k, scale, mask, deterministic=not train)
        return self.final_norm(x) * valid, probs


def mrff_scores(params, history: jax.Array, model: MRFF) -> jax.Array:
    """Scores [B, I + 1] of every item as the next one after a client's left-padded history [B, T]."""
    hidden, _ = model.apply({"params": params}, history)
    return item_logits(hidden[:, -1], model.apply({"params": params}, method=MRFF.item_table))
