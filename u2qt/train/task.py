"""What the one train loop needs from a model family: the ``Task`` protocol, and the U²QT task.

A new model is a config plus a module plus a Task; the loop (``u2qt/train/loop.py``) handles the
mesh, state, optimizer, checkpoints, k-means initialisation and dead-code resets of every
codebook stack the task declares, logging, evaluation and the end-of-run report.
"""
from __future__ import annotations

import os
from typing import Any, Protocol

import jax
import numpy as np

from u2qt.data import sources
from u2qt.model.u2qt import U2QT, ModelSpec, full_view, u2qt_objective


class Task(Protocol):
    name: str
    train_examples: dict[str, np.ndarray]  # rows the training iterator shuffles and batches
    encode_examples: dict[str, np.ndarray]  # rows that get tokens (users, items), in export order
    export_ids: list[str]  # the id of each row of encode_examples
    model_keys: tuple[str, ...]  # example keys that reach the model (e.g. held-out targets do not)
    stacks: dict[str, tuple[int, int]]  # codebook stack (param "codebooks_<view>") → (levels, codes)
    constants: dict[str, np.ndarray]  # replicated arrays every call reads (e.g. item text embeddings)
    labels: np.ndarray | None  # planted labels of encode rows, for the purity metric (or None)

    def init(self, key: jax.Array, sample: dict, constants: dict) -> Any:
        """Parameters from a sample batch (shapes only matter)."""

    def objective(self, params, batch: dict, constants: dict, key: jax.Array, quantize_on) -> tuple:
        """(loss, (metrics, aux)); aux = {"codes": {view: [B, L]}, "residuals": {view: [B, L, D]}}."""

    def encode(self, params, batch: dict, constants: dict) -> tuple:
        """(codes [B, Σ levels] in the order of ``stacks``, continuous [B, D], residuals {view: [B, L, D]})."""

    def write_outputs(self, workdir: str, codes_by_view: dict[str, np.ndarray], continuous: np.ndarray) -> None:
        """Task-specific tables at the end of a run (the loop writes the generic ones)."""

    # Optional:
    # def evaluate(self, params, constants) -> dict[str, float]        validation metrics, every eval_every
    #                                                                    steps; train.select_metric picks one
    # def final_report(self, params, constants, workdir, nearest=None, exported=None) -> dict
    #                                                                    test metrics of the selected params;
    #                                                                    a task with codebooks also gets the
    #                                                                    encoded codes {view: [N, L]}, nearest
    #                                                                    and as exported (after finalize_codes)
    # def finalize_codes(self, params, codes_by_view, residuals_by_view) -> codes_by_view
    #                                                                    the exported codes, from the encoded
    #                                                                    ones (e.g. a collision-free last level)


class UserTokenizerTask:
    """U²QT: users → tokens from tabular attributes, behaviour and item text."""
    name = "u2qt_users"
    model_keys = ("user_index", "cat", "num", "num_mask", "items", "event_feats", "length")

    def __init__(self, cfg, cache_dir: str, log=print):
        data = sources.load_data(cfg.data)
        if data.report is not None:
            log(f"data: {data.report}")
        self.cfg = cfg
        self.data = data
        self.train_examples = self.encode_examples = data.examples
        self.export_ids = data.spec.user_ids
        self.labels = data.user_types
        item_text = sources.item_text_table(data.spec, cache_dir)
        self.constants = {"item_text": item_text}
        q = cfg.quantizer
        self.stacks = {"shared": (q.shared_levels, q.shared_codes),
                       **{s: (q.source_levels, q.source_codes) for s in cfg.model.sources}}
        spec = data.spec
        self.model = U2QT(ModelSpec(tuple(spec.cat_sizes), len(spec.num_fields), spec.num_items, spec.max_events,
                                    item_text.shape[1]), cfg)
        log(f"data: {len(spec.user_ids)} users, {spec.num_items} items, "
            f"{int((data.examples['length'] > 0).sum())} users with events; fields {spec.cat_fields + spec.num_fields}")

    def init(self, key, sample, constants):
        return self.model.init({"params": key}, full_view(sample), constants["item_text"])["params"]

    def objective(self, params, batch, constants, key, quantize_on):
        return u2qt_objective(self.model, params, batch, constants["item_text"], key, self.cfg, quantize_on)

    def encode(self, params, batch, constants):
        return self.model.apply({"params": params}, full_view(batch), constants["item_text"], method=U2QT.tokens)

    def write_outputs(self, workdir, codes_by_view, continuous):
        from u2qt.train import report
        report.write_token_table(os.path.join(workdir, "user_tokens.parquet"), self.export_ids, codes_by_view)
        np.save(os.path.join(workdir, "user_representations.npy"), continuous.astype(np.float32))
        with open(os.path.join(workdir, "dataset_spec.json"), "w") as f:
            f.write(self.data.spec.to_json())


# Task name → "module:class", imported when used so one task's dependencies never load for another.
TASKS = {
    "u2qt_users": "u2qt.train.task:UserTokenizerTask",
    "das_items": "u2qt.model.item_tokenizer:ItemTokenizerTask",
    "recommender": "u2qt.model.recommender:RecommenderTask",
}


def make_task(cfg, cache_dir: str, log=print) -> Task:
    if cfg.task not in TASKS:
        raise ValueError(f"config task={cfg.task!r} is unknown; known: {sorted(TASKS)}")
    module, _, name = TASKS[cfg.task].partition(":")
    import importlib
    return getattr(importlib.import_module(module), name)(cfg, cache_dir, log)
