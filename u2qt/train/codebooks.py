"""Codebook upkeep for tokenizer tasks: the loop runs this only when a task ``Tokenizes``.

In the step (``upkeep``): an EMA of each stack's code counts, and every ``quantizer.reset_every``
steps (after the k-means step, before ``reset_until`` of training) codes whose usage fell below
``dead_code_fraction`` of the mean move onto residuals of the batch.
Around the step (``CodebookHook``): the k-means initialisation of every stack at
``quantizer.kmeans_at_step``, code health at each evaluation (on the first
``quantizer.health_rows`` rows), and at the end the exported IDs (``semantic_ids.parquet``),
``codebooks.npz``, the continuous representations (``representations.npy``) and the code part of
the summary.

The end of a run encodes every row in parts of ``EXPORT_ROWS``, each written to
``<workdir>/export.parts/`` as soon as it is encoded, so that a run killed there resumes at the
next part (the parts are keyed by the final codebooks; other parameters start them afresh) and only
codes, not residuals or representations, are held for all rows (residuals only when the task
re-assigns codes: ``assign_ids``). The directory is removed once the files are written.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from u2qt import config as config_lib
from u2qt import files
from u2qt.data.pipeline import in_order_batches
from u2qt.errors import WorkdirError
from u2qt.quant import codebooks as cb
from u2qt.quant import residual as rq
from u2qt.quant import stats
from u2qt.quant.semantic_ids import FILENAME, SemanticIds
from u2qt.train import distributed

PARTS_DIR = "export.parts"


def initial_usage(task, cfg) -> dict:
    """Every code starts at the mean usage (batch_size / K per step), so none is dead at once."""
    b = cfg.train.batch_size
    return {view: jnp.full((levels, k), b / k, jnp.float32) for view, (levels, k) in task.stacks.items()}


def upkeep(task, cfg, state: dict, aux: dict, step, key, steps) -> tuple[dict, dict]:
    """Usage EMA and dead-code resets of every stack, after the optimizer update of ``step`` of a
    run of ``steps``."""
    qc = cfg.quantizer
    do_reset = ((qc.reset_every > 0) & ((step + 1) % max(qc.reset_every, 1) == 0) & cb.quantize_on(step, qc)
                & (step + 1 <= qc.reset_until * steps))
    books = task.codebooks(state["params"])
    new_books, usage, metrics = {}, {}, {}
    for i, (view, (_, k)) in enumerate(task.stacks.items()):
        counts = cb.code_counts(aux["codes"][view], k)
        ema = qc.usage_decay * state["usage"][view] + (1 - qc.usage_decay) * counts
        mean_usage = cfg.train.batch_size / k
        revived, dead = cb.reset_dead_codes(books[view], ema, aux["residuals"][view],
                                            jax.random.fold_in(key, 1000 + i),
                                            threshold=qc.dead_code_fraction * mean_usage)
        new_books[view] = jnp.where(do_reset, revived, books[view])
        usage[view] = jnp.where(do_reset & dead, mean_usage, ema)
        metrics[f"dead_{view}"] = jnp.mean(dead)
    return dict(state, params=task.with_codebooks(state["params"], new_books), usage=usage), metrics


class CodebookHook:
    """What the loop does around the step for a tokenizer task (see the module docstring)."""

    ENCODE_ROWS = 2048  # rows encoded per call (a multiple of the batch size): few calls, one program

    def __init__(self, task, cfg, constants, placement, log=print):
        self.task, self.cfg, self.constants = task, cfg, constants
        self.placement, self.log = placement, log
        self.rows = {k: v for k, v in task.rows.items() if k in task.model_keys}
        self.sizes = {view: k for view, (_, k) in task.stacks.items()}
        self.kmeans_step = cb.kmeans_step(cfg.quantizer) if cfg.quantizer.kmeans_init else None
        b = cfg.train.batch_size
        self.encode_batch = b * max(1, self.ENCODE_ROWS // b)
        self._encode = jax.jit(task.encode)
        self._kmeans = jax.jit(cb.residual_kmeans, static_argnums=(1, 2), static_argnames=("iters", "implementation"))

    def encode_rows(self, params, start: int = 0, stop: int | None = None):
        """Codes {view: [N, L]}, continuous vectors [N, D] and residuals {view: [N, L, D]} of the
        rows [start, stop) to tokenize (default: all), in table order."""
        codes, conts, res = [], [], []
        p = self.placement
        for batch in in_order_batches(self.rows, self.encode_batch, start, stop):
            valid = batch.pop("valid")
            c, h, r = self._encode(params, p.to_device(batch, self.rows, self.encode_batch), self.constants)
            codes.append({v: p.to_host(x)[valid] for v, x in c.items()})
            conts.append(p.to_host(h)[valid])
            res.append({v: p.to_host(x)[valid] for v, x in r.items()})
        join = lambda parts: {v: np.concatenate([q[v] for q in parts]) for v in self.task.stacks}
        return join(codes), np.concatenate(conts), join(res)

    # ------------------------------------------------------------------ before a step
    def before_step(self, state: dict, step: int) -> dict:
        if step != self.kmeans_step:
            return state
        return self.kmeans_init(state)

    def kmeans_init(self, state: dict) -> dict:
        """Every codebook stack ← residual k-means on the current encodings of (up to
        ``quantizer.kmeans_rows``) rows. Runs once, at step ``quantizer.kmeans_at_step``: before it
        the encoders warm up unquantized, so the codebooks start where trained encodings are."""
        qc = self.cfg.quantizer
        t0 = time.time()
        _, _, residuals = self.encode_rows(state["params"], stop=qc.kmeans_rows)
        books = self.task.codebooks(state["params"])
        key = jax.random.fold_in(jax.random.key(self.cfg.seed), 10_000_019)
        devices = len(self.placement.devices)
        new_books = {}
        for i, (view, k) in enumerate(self.sizes.items()):
            usable = min(len(residuals[view]), qc.kmeans_rows) // devices * devices
            z = jnp.asarray(residuals[view][:usable, 0])  # level-0 input = the view's vector
            if z.shape[0] < k:
                raise config_lib.ConfigError(
                    f"k-means init: {z.shape[0]} rows cannot initialise {k} codes of view {view!r}; "
                    f"lower the codes per level of that stack (config quantizer.*_codes)")
            fitted = self._kmeans(z, books[view].shape[0], k, jax.random.fold_in(key, i),
                                  iters=qc.kmeans_iters, implementation=rq.implementation(qc))
            # Laid out as the parameter is (split over "model" when the sharding rules say so).
            new_books[view] = jax.device_put(fitted.astype(books[view].dtype), books[view].sharding)
        self.log(f"k-means init of {len(self.sizes)} codebook stacks at step {int(state['step'])} "
                 f"on {usable} rows: {time.time() - t0:.1f}s")
        return dict(state, params=self.task.with_codebooks(state["params"], new_books))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, params) -> dict:
        """Usage and perplexity of every level, and the primary view's collision rate, of the first
        ``quantizer.health_rows`` rows (0: all)."""
        codes, _, _ = self.encode_rows(params, stop=self.cfg.quantizer.health_rows or None)
        first = next(iter(codes))
        out = {f"collision_rate_{first}": stats.collision_rate(codes[first])}
        for view, c in codes.items():
            u = stats.code_usage(c, self.sizes[view])
            for level, (used, ppl) in enumerate(zip(u["usage"], u["perplexity"])):
                out[f"usage_{view}_{level}"] = used
                out[f"perplexity_{view}_{level}"] = ppl
        return out

    # ------------------------------------------------------------------ end of the run
    EXPORT_ROWS = 1 << 18  # rows per part of the end-of-run export

    def finish(self, params, workdir: str) -> tuple[dict, dict | None]:
        """Encodes every row with the final parameters part by part (see the module docstring),
        turns the nearest codes into the exported IDs (the task's ``assign_ids``, if any), writes
        them, and returns (summary part, codes); ({}, None) on processes other than 0."""
        task = self.task
        assign = getattr(task, "assign_ids", None)
        books = {v: self.placement.to_host(b) for v, b in task.codebooks(params).items()}  # whole, even if split
        n = len(task.row_ids)
        starts = list(range(0, n, self.EXPORT_ROWS))
        directory = os.path.join(workdir, PARTS_DIR)
        done = distributed.from_main(_parts_done(directory, _parts_key(books, n, self.EXPORT_ROWS), len(starts))
                                     if distributed.is_main() else np.zeros(len(starts), bool))
        if done.any():
            self.log(f"export: {int(done.sum())} of {len(starts)} parts already encoded (kept from an interrupted end of run)")
        t0, encoded = time.time(), 0
        for i, start in enumerate(starts):
            if done[i]:
                continue
            stop = min(n, start + self.EXPORT_ROWS)
            nearest, continuous, residuals = self.encode_rows(params, start, stop)
            part = {"continuous": continuous.astype(np.float32)}
            for view, c in nearest.items():
                part[f"codes.{view}"] = c
                part[f"error.{view}"] = np.array(_squared_error(residuals[view][:, 0], c, books[view]))
                if assign:
                    part[f"residuals.{view}"] = residuals[view]
            if distributed.is_main():
                _write_part(directory, i, part)
            encoded += stop - start
            if len(starts) > 1:
                self.log(f"export: part {i + 1}/{len(starts)} encoded ({stop:,} of {n:,} rows, "
                         f"{encoded / max(time.time() - t0, 1e-9):,.0f} rows/s)")
        if not distributed.is_main():
            return {}, None

        parts = [_read_part(directory, i, lambda k: k != "continuous") for i in range(len(starts))]
        join = lambda name: {v: np.concatenate([q[f"{name}.{v}"] for q in parts]) for v in self.sizes}
        nearest = join("codes")
        if assign:
            residuals = join("residuals")
            exported = assign(params, nearest, residuals)
            errors = {v: _squared_error(residuals[v][:, 0], exported[v], books[v]) for v in self.sizes}
        else:
            exported = nearest
            errors = {v: tuple(np.sum([q[f"error.{v}"] for q in parts], 0)) for v in self.sizes}
        rel_err = {v: float(num / max(den, 1e-12)) for v, (num, den) in errors.items()}
        dim = _write_representations(os.path.join(workdir, "representations.npy"), directory, len(starts), n)
        table = SemanticIds(task.row_ids, exported, self.sizes, task.row_kind)
        summary = summarize(exported, self.sizes, dim, rel_err, getattr(task, "labels", None),
                            input_dim=getattr(task, "input_dim", None))
        summary["ids"] = {k: v for k, v in table.collision_stats().items()
                          if k not in ("collision_rate", "rows_sharing_codes")}
        recon = getattr(task, "reconstruction_error", None)
        if recon:
            summary["reconstruction_mse"] = recon(params, exported, self.constants)
        if assign:
            first = table.primary_view
            summary["ids"]["nearest_collision_rate"] = stats.collision_rate(nearest[first])
            summary["ids"]["nearest_rows_sharing_codes"] = stats.rows_sharing_codes(nearest[first])
            summary["ids"]["nearest_distinct_ids"] = int(len(np.unique(nearest[first], axis=0)))
            summary["ids"]["moved_to_a_free_code"] = float(np.mean(np.any(exported[first] != nearest[first], 1)))
        table.write(os.path.join(workdir, FILENAME))
        np.savez(os.path.join(workdir, "codebooks.npz"), **books)
        shutil.rmtree(directory)
        return summary, exported


def _squared_error(z: np.ndarray, codes: np.ndarray, book: np.ndarray) -> tuple[float, float]:
    """(Σ ‖z − ẑ‖², Σ ‖z‖²) of inputs z [N, D] and their decoded codes [N, L] (book [L, K, D])."""
    z_hat = np.asarray(rq.decode_codes(jnp.asarray(codes), jnp.asarray(book)))
    return float(np.sum((z - z_hat) ** 2)), float(np.sum(z ** 2))


def _parts_key(books: dict, rows: int, part_rows: int) -> str:
    """What the parts of an export belong to: the final codebooks (they change at every step, so
    they tell the parameters apart), the number of rows and the rows per part."""
    h = hashlib.sha256(f"{rows}/{part_rows}".encode())
    for view, book in books.items():
        h.update(view.encode())
        h.update(np.ascontiguousarray(book).tobytes())
    return h.hexdigest()


def _parts_done(directory: str, key: str, count: int) -> np.ndarray:
    """Which of ``count`` parts ``directory`` already holds for ``key``; a directory of other
    parameters is emptied and labelled with ``key``."""
    label = os.path.join(directory, "key")
    try:
        with open(label, encoding="utf-8") as f:
            same = f.read() == key
    except OSError:
        same = False
    if not same:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        with open(label, "w", encoding="utf-8") as f:
            f.write(key)
    return np.array([os.path.exists(_part_path(directory, i)) for i in range(count)])


def _part_path(directory: str, i: int) -> str:
    return os.path.join(directory, f"part_{i:05d}.npz")


def _write_part(directory: str, i: int, arrays: dict) -> None:
    """Whole or not at all (``files.atomic_write``: a kill leaves no half part)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    files.atomic_write(_part_path(directory, i), write)


def _read_part(directory: str, i: int, keep=lambda key: True) -> dict:
    """The arrays of part ``i`` whose names ``keep`` accepts."""
    path = _part_path(directory, i)
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files if keep(k)}
    except (OSError, ValueError, EOFError, KeyError) as e:
        raise WorkdirError(f"{path}: unreadable part of the end-of-run export ({e}); delete {directory} "
                           f"and run the same command again to encode every row afresh") from None


def _write_representations(path: str, directory: str, count: int, rows: int) -> int:
    """The continuous vectors [rows, dim] float32 of the ``count`` parts, appended part by part to
    a .npy file (never all in memory, and not memory-mapped: a mapped 10 M × 160 file counted
    its 6.4 GB of written pages in the process's resident memory), written whole or not at all
    (``files.atomic_write``); returns dim."""
    dims = []

    def write(tmp: str) -> None:
        if not count:
            np.save(tmp, np.zeros((0, 0), np.float32))
            return
        at = 0
        with open(tmp, "wb") as f:
            for i in range(count):
                c = np.ascontiguousarray(_read_part(directory, i, lambda k: k == "continuous")["continuous"],
                                         np.float32)
                if i == 0:
                    dims.append(c.shape[1])
                    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(c.dtype),
                                                             "fortran_order": False, "shape": (rows, c.shape[1])})
                assert c.shape[1] == dims[0], (i, c.shape, dims[0])
                f.write(c.tobytes())
                at += len(c)
        assert at == rows, (at, rows)
    files.atomic_write(path, write)
    return dims[0] if dims else 0


def summarize(codes_by_view: dict[str, np.ndarray], num_codes: dict[str, int], continuous_dim: int,
              relative_errors: dict[str, float], labels: np.ndarray | None = None,
              input_dim: int | None = None) -> dict:
    """The code part of the end-of-run numbers. The first view is the primary one (U²QT: the
    shared stack): its collision rate and the purity of its first code w.r.t. planted labels.

    Sizes, per row: the tokens (bits of each code, packed), the float32 representation the codes
    quantize (``continuous_dim``), and, where the task has one (``input_dim``: an item's text
    embedding), the float32 input embedding, the baseline a user would otherwise store."""
    views = {}
    token_bits = 0
    for view, codes in codes_by_view.items():
        s = stats.code_usage(codes, num_codes[view])
        s["relative_quantization_error"] = relative_errors[view]
        views[view] = s
        token_bits += codes.shape[1] * stats.bits_per_code(num_codes[view])
    primary = next(iter(codes_by_view.values()))
    summary = {
        "rows": int(len(primary)),  # users or items, one semantic ID each
        "views": views,
        "primary_view": next(iter(codes_by_view)),
        "collision_rate": stats.collision_rate(primary),  # (N − distinct)/N, as the field reports it
        "rows_sharing_codes": stats.rows_sharing_codes(primary),
        "collision_rate_all_views": stats.collision_rate(np.concatenate(list(codes_by_view.values()), 1)),
        "bytes_per_row_tokens": token_bits / 8,
        "bytes_per_row_float32": continuous_dim * 4,
    }
    summary["compression_x"] = summary["bytes_per_row_float32"] / summary["bytes_per_row_tokens"]
    if input_dim:
        summary["bytes_per_row_input_float32"] = input_dim * 4
        summary["compression_x_input"] = summary["bytes_per_row_input_float32"] / summary["bytes_per_row_tokens"]
    if labels is not None:
        summary["purity_first_code"] = stats.purity(primary[:, 0], labels)
    return summary
