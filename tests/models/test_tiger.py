"""TIGER's encoder-decoder: the decoding path equals teacher forcing, and it learns a small task."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from u2qt.models.decoding import PrefixIndex, beam_search
from u2qt.models.tiger import BOS, Tiger, tiger_loss
from u2qt.prep.ids import user_buckets

SIZES = (4, 4, 3)


def _small(dropout=0.0):
    return Tiger(level_sizes=SIZES, user_buckets=7, max_history=5, d_model=32, heads=2, d_kv=16, mlp=64,
                 encoder_layers=2, decoder_layers=2, dropout=dropout)


def _codes(n, seed=0):
    """n unique IDs over SIZES, row 0 = padding."""
    rng = np.random.default_rng(seed)
    every = np.stack(np.meshgrid(*[np.arange(k) for k in SIZES], indexing="ij"), -1).reshape(-1, len(SIZES))
    return np.concatenate([np.zeros((1, 3), np.int32), every[rng.choice(len(every), n, replace=False)]]).astype(np.int32)


def test_the_cached_decoding_step_equals_teacher_forcing():
    model = _small()
    codes = jnp.asarray(_codes(20))
    history = jnp.asarray([[0, 0, 3, 4, 5], [1, 2, 3, 4, 6], [0, 0, 0, 0, 7]], jnp.int32)
    user, target = jnp.asarray([0, 3, 6], jnp.int32), jnp.asarray([8, 9, 10], jnp.int32)
    params = model.init(jax.random.key(0), history, user, target, codes)["params"]
    logits, tgt = model.apply({"params": params}, history, user, target, codes)
    bound = model.bind({"params": params})
    tokens, mask = bound.encoder_tokens(history, user, codes)
    cross = bound.cross_kv(bound.encode(tokens, mask))
    cache = bound.empty_cache(3, 1)
    token = jnp.full((3, 1), BOS)
    for level in range(len(SIZES)):
        hidden, cache = bound.decode_step(token, jnp.asarray(level), cache, cross, mask)
        step_logits = bound.level_logits(hidden, level)[:, 0]
        np.testing.assert_allclose(np.asarray(step_logits), np.asarray(logits[:, level]), rtol=2e-4, atol=2e-4)
        token = bound.code_tokens(tgt)[:, level:level + 1]


def test_padding_in_the_history_changes_nothing():
    model = _small()
    codes = jnp.asarray(_codes(20))
    params = model.init(jax.random.key(1), jnp.zeros((1, 5), jnp.int32), jnp.zeros(1, jnp.int32),
                        jnp.ones(1, jnp.int32), codes)["params"]
    # the same last two items, with different amounts of left padding, through a 5-long window vs
    # a longer one would differ by positions; here: padding codes must not leak into the encoding
    h1 = jnp.asarray([[0, 0, 0, 3, 4]], jnp.int32)
    codes_changed = codes.at[0].set(jnp.asarray([3, 2, 1]))  # what padding would read if it leaked
    a, _ = model.apply({"params": params}, h1, jnp.zeros(1, jnp.int32), jnp.ones(1, jnp.int32), codes)
    b, _ = model.apply({"params": params}, h1, jnp.zeros(1, jnp.int32), jnp.ones(1, jnp.int32), codes_changed)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_it_learns_a_deterministic_next_item_rule_to_near_perfect_accuracy():
    """Items 1..30 with random IDs; the next item is (last + user) mod 30 + 1. After training,
    the top beam is the right item for nearly every history (an untrained model: ~1/30)."""
    n, steps = 30, 400
    codes = jnp.asarray(_codes(n, seed=2))
    model = _small(dropout=0.0)
    rng = np.random.default_rng(0)

    def batch(size):
        user = rng.integers(0, 3, size)
        last = rng.integers(1, n + 1, size)
        history = np.zeros((size, 5), np.int32)
        history[:, -1] = last
        history[:, -2] = rng.integers(0, n + 1, size)  # noise the rule ignores
        return {"history": jnp.asarray(history), "user": jnp.asarray(user, jnp.int32),
                "target": jnp.asarray((last + user) % n + 1, jnp.int32)}

    b = batch(64)
    params = model.init(jax.random.key(0), b["history"], b["user"], b["target"], codes)["params"]
    tx = optax.adamw(3e-3)
    opt = tx.init(params)

    @jax.jit
    def train_step(params, opt, b):
        (loss, _), grads = jax.value_and_grad(lambda p: tiger_loss(model, p, b, codes), has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    index = PrefixIndex.build(np.asarray(codes[1:]), k_max=max(SIZES))

    @jax.jit
    def top1(params, b):
        bound = model.bind({"params": params})
        tokens, mask = bound.encoder_tokens(b["history"], b["user"], codes)
        cross = bound.cross_kv(bound.encode(tokens, mask))

        def step(token, level, cache):
            hidden, cache = bound.decode_step(token, level, cache, cross, mask)
            return jax.nn.log_softmax(bound.level_logits(hidden, level), -1), cache

        items, *_ = beam_search(step, bound.empty_cache(b["history"].shape[0], 4), index, b["history"].shape[0], 4,
                                len(SIZES), BOS, lambda c, l: model.first_code + jnp.asarray(model.offsets)[l] + c)
        return items[:, 0]

    test = batch(512)
    before = float(jnp.mean(top1(params, test) == test["target"]))
    for _ in range(steps):
        params, opt, loss = train_step(params, opt, batch(64))
    after = float(jnp.mean(top1(params, test) == test["target"]))
    assert before < 0.15 and after >= 0.95, (before, after, float(loss))


def test_user_buckets_are_stable_and_in_range():
    a = user_buckets(["u1", "u2", "alice"], 2000)
    assert a.tolist() == user_buckets(["u1", "u2", "alice"], 2000).tolist() and (0 <= a).all() and (a < 2000).all()



def test_bfloat16_compute_keeps_float32_parameters_and_close_results():
    codes = jnp.asarray(_codes(20))
    history = jnp.asarray([[0, 0, 3, 4, 5], [1, 2, 3, 4, 6]], jnp.int32)
    user, target = jnp.asarray([0, 3], jnp.int32), jnp.asarray([8, 9], jnp.int32)
    f32, bf16 = _small(), _small().clone(dtype=jnp.bfloat16)
    params = f32.init(jax.random.key(0), history, user, target, codes)["params"]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    batch = {"history": history, "user": user, "target": target}
    full, _ = tiger_loss(f32, params, batch, codes)
    half, _ = tiger_loss(bf16, params, batch, codes)
    assert half.dtype == jnp.float32 and abs(float(half) - float(full)) < 0.05 * abs(float(full))
    bound = bf16.bind({"params": params})  # decoding in bfloat16: the cache takes the compute dtype
    tokens, mask = bound.encoder_tokens(history, user, codes)
    hidden, cache = bound.decode_step(jnp.full((2, 3), BOS), jnp.asarray(0), bound.empty_cache(2, 3),
                                      bound.cross_kv(bound.encode(tokens, mask)), mask)
    assert cache[0][0].dtype == jnp.bfloat16 and bool(jnp.isfinite(bound.level_logits(hidden, 0)).all())
