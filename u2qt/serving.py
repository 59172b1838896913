"""Load and run an exported u2qt bundle with nothing but ``jax`` and ``numpy`` (plus ``flatbuffers``,
which ``jax.export`` needs to read serialized functions).

    python -m u2qt.serving BUNDLE                         # its functions, and its self-check on this machine

    bundle = u2qt.serving.load("bundles/beauty_id")
    scores, items = bundle("top_k", history)           # or bundle.functions["top_k"](history)
    bundle.manifest["functions"]["top_k"]["inputs"]     # names, shapes ("batch" = any), dtypes
    codes, report = bundle.tokenize_users(users, events) # user tokenizer: raw rows → codes of every view

A bundle (written by ``python -m u2qt.export``) is a directory:
    manifest.json       format version, u2qt / jax versions, task, config, each function's input and
                        output specs and platforms, codebook sizes, and the SHA-256 of every file
    functions/NAME.jax  ``jax.export``-serialized functions with a symbolic batch dimension,
                        called as fn(params, constants, *inputs)
    params.npz          the parameters ("/"-joined paths)
    constants.npz       the arrays every call reads (e.g. item text embeddings, the ID table)
    extra files         e.g. semantic_ids.parquet, items.json (item index → id), dataset_spec.json

``load`` refuses, with a message naming the problem, a bundle whose format version it does not
know, whose files do not match their checksums, or none of whose platforms this machine has.
This module imports no flax and no model code (a test runs it with flax made unimportable).
"""
from __future__ import annotations

import json
import os

import numpy as np

from u2qt.files import sha256  # stdlib only, like everything this module imports besides jax and numpy
from u2qt.prep import ids as id_prep  # numpy only: item ids → indices, TIGER's user hash
from u2qt.prep import users as user_rows  # numpy only: the code training encodes users with
from u2qt.prep.wordpiece import WordPiece, pad_rows  # stdlib only: the tokenizer training's text encoder uses

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SELF_CHECK = "self_check.npz"  # example inputs of each function and the outputs export computed in process


class BundleError(ValueError):
    """A bundle that cannot be run here; the message says which file or field and why."""


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    """{"a/b": x} → {"a": {"b": x}} (the layout of params.npz and constants.npz)."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def as_tree(out):
    """A function's output as a dict tree (a tuple's items keyed "0", "1", ...)."""
    if isinstance(out, (tuple, list)):
        return {str(i): as_tree(x) for i, x in enumerate(out)}
    if isinstance(out, dict):
        return {k: as_tree(v) for k, v in out.items()}
    return out


def flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            if "/" in str(k):
                raise ValueError(f"key {k!r} holds '/', which the bundle layout reserves")
            out.update(flatten(v, f"{prefix}{k}/"))
        return out
    return {prefix[:-1]: np.asarray(tree)}


class Bundle:
    """The functions of a loaded bundle, each bound to its parameters and constants."""

    def __init__(self, path: str, manifest: dict, params, constants, exported: dict):
        self.path, self.manifest, self.params, self.constants = path, manifest, params, constants
        self._exported = exported
        self._spec = None
        self._wordpiece = None
        self._items = None
        self.functions = {name: (lambda *inputs, _n=name: self(_n, *inputs)) for name in exported}

    def __call__(self, name: str, *inputs):
        if name not in self._exported:
            raise BundleError(f"{self.path}: no function {name!r}; it has {sorted(self._exported)}")
        spec = self.manifest["functions"][name]["inputs"]
        if len(inputs) != len(spec):
            raise BundleError(f"{name} takes {len(spec)} inputs ({', '.join(spec)}), got {len(inputs)}")
        arrays = []
        for (input_name, s), value in zip(spec.items(), inputs):
            value = np.asarray(value, dtype=s["dtype"])
            if value.ndim != len(s["shape"]) or any(isinstance(d, int) and d != n for d, n in zip(s["shape"], value.shape)):
                raise BundleError(f"{name}: input {input_name!r} must have shape {s['shape']}, got {list(value.shape)}")
            arrays.append(value)
        return self._exported[name].call(self.params, self.constants, *arrays)

    def encode_users(self, users, events=None) -> tuple[dict[str, np.ndarray], dict]:
        """Raw users, as the training tables hold them, → the inputs of ``tokens`` encoded with the
        training vocabularies and normalization (``dataset_spec.json``), and a report: users,
        events used, unknown categories per field (they go to the unknown bucket), missing fields,
        unknown items (dropped), users without events, columns the model does not read.

        ``users``: a list of dicts, a dict of columns or a DataFrame with the users table's columns
        (``user_id`` and the attributes), each row optionally holding an ``events`` list; ``events``:
        the events table's rows (``user_id``, ``item_id``, ``timestamp`` in unix seconds, optional
        ``value``). A row that cannot be read raises ``BundleError`` naming the row and column."""
        if self._spec is None:
            if not os.path.isfile(self.file("dataset_spec.json")):
                raise BundleError(f"{self.path}: no dataset_spec.json, so it cannot encode raw user rows "
                                  f"(task {self.manifest.get('task')!r}); pass encoded inputs instead")
            with open(self.file("dataset_spec.json"), encoding="utf-8") as f:
                self._spec = json.load(f)
        try:
            return user_rows.encode_rows(self._spec, users, events)
        except user_rows.RowError as e:
            raise BundleError(str(e)) from None

    def tokenize_users(self, users, events=None) -> tuple[dict[str, np.ndarray], dict]:
        """``encode_users`` then ``tokens``: codes of every view per user, and the encoding report."""
        arrays, report = self.encode_users(users, events)
        codes = self("tokens", *[arrays[k] for k in self.manifest["functions"]["tokens"]["inputs"]])
        return {view: np.asarray(c) for view, c in codes.items()}, report

    def recommend(self, histories, users=None) -> tuple[list[list], np.ndarray, dict]:
        """A recommender or generative retriever from item ids: each user's history as the data
        set's item ids, oldest first (and, for TIGER, the user ids, hashed as in training) →
        (the top items' ids per user, best first — None for a beam that found no item —, their
        scores, a report counting history ids the model does not know, dropped)."""
        spec = self.manifest["functions"].get("top_k")
        if spec is None or not os.path.exists(self.file("items.json")):
            raise BundleError(f"{self.path}: no top_k function with an item table (task {self.manifest.get('task')!r})")
        if self._items is None:
            with open(self.file("items.json"), encoding="utf-8") as f:
                ids = json.load(f)
            self._items = (ids, {str(i): n for n, i in enumerate(ids) if i is not None})
        ids, index = self._items
        try:
            history, unknown = id_prep.histories(histories, index, spec["inputs"]["history"]["shape"][1])
        except ValueError as e:
            raise BundleError(str(e)) from None
        inputs = [history]
        if "user_bucket" in spec["inputs"]:
            if users is None or len(users) != len(history):
                raise BundleError(f"{self.path}: this model reads the user too: pass users= (one id per history)")
            inputs.append(id_prep.user_buckets(users, self.manifest["config"]["model"]["user_buckets"]))
        scores, items = (np.asarray(x) for x in self("top_k", *inputs))
        top = [[ids[i] if 0 < i < len(ids) else None for i in row] for row in items.tolist()]
        return top, scores, {"users": len(history), "unknown_items": unknown,
                             "empty_histories": int((history == 0).all(axis=1).sum())}

    def tokenize_text(self, texts) -> np.ndarray:
        """Texts → word-piece ids [N, T] for ``text_codes``, as training tokenized item text
        ([CLS] … [SEP], cut at the model's length, 0-padded to a power of two ≥ 16)."""
        spec = self.manifest["functions"].get("text_codes", {}).get("tokenizer")
        if spec is None:
            raise BundleError(f"{self.path}: no text_codes function (task {self.manifest.get('task')!r})")
        if self._wordpiece is None:
            self._wordpiece = WordPiece.from_tokenizer_json(self.file(spec["file"]))
        ids = self._wordpiece(texts, spec["max_length"], lowercase=spec["lowercase"])
        return pad_rows(ids, min(max(16, 1 << (max(map(len, ids), default=1) - 1).bit_length()), spec["max_length"]))

    def text_codes(self, texts) -> dict[str, np.ndarray]:
        """Item texts → their codes (the bundle's MiniLM in JAX, then the run's quantizer)."""
        codes = self("text_codes", self.tokenize_text(texts))
        return {view: np.asarray(c) for view, c in codes.items()}

    def self_check(self, rtol: float = 1e-4, atol: float = 1e-5) -> dict[str, dict]:
        """Runs each function on the example inputs export stored (e.g. held-out test histories)
        and compares with the outputs the training code computed in process: integer outputs
        (tokens, item indices) must be equal, float outputs (scores) close. Returns per function
        {"rows", "equal": bool, "int_agreement": share of equal integers, "max_abs_diff": floats}
        ({} for a bundle exported without examples)."""
        if not os.path.exists(self.file(SELF_CHECK)):
            return {}
        with np.load(self.file(SELF_CHECK)) as f:
            stored = unflatten({k: f[k] for k in f.files})
        report = {}
        for name, check in stored.items():
            inputs = [check["inputs"][str(i)] for i in range(len(check["inputs"]))]
            got = flatten(as_tree(self(name, *inputs)), "")
            want = flatten(check["outputs"], "")
            same = total = 0
            close, diff = True, 0.0
            for key, w in want.items():
                g = np.asarray(got[key])
                if np.issubdtype(w.dtype, np.integer):
                    same, total = same + int((g == w).sum()), total + w.size
                else:
                    diff = max(diff, float(np.max(np.abs(g.astype(np.float64) - w), initial=0.0)))
                    close = close and bool(np.allclose(g, w, rtol=rtol, atol=atol))
            report[name] = {"rows": int(len(inputs[0])), "int_agreement": same / total if total else 1.0,
                            "max_abs_diff": diff, "equal": same == total and close}
        return report

    def file(self, name: str) -> str:
        """The path of one of the bundle's extra files (e.g. ``items.json``)."""
        return os.path.join(self.path, name)


def load(path: str, platform: str | None = None) -> Bundle:
    """Reads and checks the bundle at ``path`` for ``platform`` (default: jax's default backend)."""
    import jax
    from jax import export

    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise BundleError(f"{path}: no {MANIFEST}; not a u2qt bundle (write one with python -m u2qt.export)")
    try:
        manifest = json.load(open(manifest_path, encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: bundle format version {version!r}; this loader reads version "
                          f"{FORMAT_VERSION} (export the run again with this u2qt)")
    for name, digest in manifest.get("files", {}).items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise BundleError(f"{path}: {name} is missing (the manifest lists it)")
        if sha256(file) != digest:
            raise BundleError(f"{path}: {name} does not match its checksum in {MANIFEST}: the file is damaged or "
                              f"was changed after export")
    platform = (platform or jax.default_backend()).lower()
    platform = {"gpu": "cuda"}.get(platform, platform)
    exported = {}
    for name, spec in manifest["functions"].items():
        if platform not in spec["platforms"]:
            raise BundleError(f"{path}: function {name!r} was exported for {spec['platforms']}, not for {platform!r} "
                              f"(export again with --platforms including it)")
        with open(os.path.join(path, spec["file"]), "rb") as f:
            try:
                exported[name] = export.deserialize(bytearray(f.read()))
            except ImportError as e:  # jax.export reads serialized functions with flatbuffers, an optional jax dependency
                raise BundleError(f"{path}: cannot read {spec['file']}: {e} (pip install flatbuffers)") from None
    # On the device once (a call would otherwise copy every array from the host, e.g. a text encoder's weights).
    devices = [d for d in jax.devices() if d.platform.lower() in (platform, {"cuda": "gpu"}.get(platform))]
    if not devices:
        raise BundleError(f"{path}: asked for platform {platform!r}, but this machine's jax has "
                          f"{sorted({d.platform for d in jax.devices()})} devices")
    device = devices[0]
    with np.load(os.path.join(path, "params.npz")) as f:
        params = jax.device_put(unflatten({k: f[k] for k in f.files}), device)
    with np.load(os.path.join(path, "constants.npz")) as f:
        constants = jax.device_put(unflatten({k: f[k] for k in f.files}), device)
    return Bundle(path, manifest, params, constants, exported)


def main(argv=None) -> int:
    """``python -m u2qt.serving BUNDLE``: load the bundle here, list its functions and run its
    self-check; exit status 1 when an output differs from what export computed."""
    import argparse
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("bundle")
    p.add_argument("--platform", default=None, help="cpu, cuda or tpu (default: jax's default backend)")
    args = p.parse_args(argv)
    import sys

    import jax
    try:
        bundle = load(args.bundle, args.platform)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = bundle.manifest
    print(f"{args.bundle}: task {m['task']}, {m['parameters']:,} parameters, exported by u2qt {m['u2qt_version']} "
          f"with jax {m['jax_version']}; loaded with jax {jax.__version__} on {jax.default_backend()}")
    for name, spec in m["functions"].items():
        shapes = ", ".join(f"{k} {s['shape']} {s['dtype']}" for k, s in spec["inputs"].items())
        print(f"  {name}({shapes}): {spec['doc']}")
    report = bundle.self_check()
    for name, r in report.items():
        print(f"  self-check {name}: {r['rows']} example rows, integer outputs equal {r['int_agreement']:.2%}, "
              f"largest float difference {r['max_abs_diff']:.2e} → {'same' if r['equal'] else 'DIFFERENT'}")
    return 0 if all(r["equal"] for r in report.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
