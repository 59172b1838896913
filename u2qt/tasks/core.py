"""What the one train loop needs from a model family: a small core and optional capabilities.

Core (every task)
    name          the config's ``task`` value
    examples      {key: [N, ...]} training rows the loop shuffles and batches
    model_keys    the keys of ``examples`` that reach the model (held-out targets do not)
    constants     {key: array} replicated arrays every call reads (e.g. item text embeddings)
    init(key, sample, constants) -> params
    loss(params, batch, constants, key, step) -> (loss, aux)
        aux["metrics"]: {name: scalar}; a tokenizer also returns aux["codes"] {view: [B, L]} and
        aux["residuals"] {view: [B, L, D]} of the batch (for the usage EMA and dead-code resets)

Capabilities the loop discovers (``isinstance(task, Tokenizes)`` etc.); a task declares only what
it does, and the loop does no work for what it lacks:
    Tokenizes   codebook stacks; the rows it tokenizes; encode; (optionally) the exported IDs.
                The loop then initialises the codebooks by k-means, resets dead codes, reports
                code health and writes the semantic-ID table (``u2qt/train/codebooks.py``).
    Evaluates   validation metrics during training (``train.select_metric`` keeps the best
                parameters) and the test report of the selected parameters.
    Servable    named pure functions with their argument specs, for export to serving.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np


@runtime_checkable
class Task(Protocol):
    name: str
    examples: dict[str, np.ndarray]
    model_keys: tuple[str, ...]
    constants: dict[str, np.ndarray]

    def init(self, key: jax.Array, sample: dict, constants: dict) -> Any: ...

    def loss(self, params, batch: dict, constants: dict, key: jax.Array, step: jax.Array) -> tuple: ...


class Encoded(NamedTuple):
    """A tokenizer's encoding of a batch of rows."""
    codes: dict[str, jax.Array]      # view → [B, L] nearest codes
    continuous: jax.Array            # [B, D] the vector(s) the codes quantize, side by side
    residuals: dict[str, jax.Array]  # view → [B, L, D] each level's input


@runtime_checkable
class Tokenizes(Protocol):
    """Turns rows (users or items) into semantic IDs with one or more codebook stacks."""
    stacks: dict[str, tuple[int, int]]  # view → (levels, codes per level); the first is the primary view
    rows: dict[str, np.ndarray]         # the inputs of every row to tokenize, in table order
    row_ids: list[str]                  # the id of each row
    row_kind: str                       # "user" or "item"

    def codebooks(self, params) -> dict[str, jax.Array]:
        """{view: [L, K, D]} of the parameters."""

    def with_codebooks(self, params, books: dict[str, Any]) -> Any:
        """The parameters with some codebooks replaced (works on any tree shaped like them)."""

    def encode(self, params, batch: dict, constants: dict) -> Encoded: ...

    # Optional:
    # labels: np.ndarray | None                                  planted labels of the rows (purity)
    # def assign_ids(self, params, codes, residuals) -> codes    exported codes from the nearest
    #                                                            ones (e.g. a collision-free last level)
    # def reconstruction_error(self, params, codes, constants) -> float
    #                                                            MSE per element of the input decoded
    #                                                            from the exported codes (summary)


@runtime_checkable
class Evaluates(Protocol):
    def evaluate(self, params, constants: dict) -> dict[str, float]:
        """Validation metrics, every ``train.eval_every`` steps."""

    def report(self, params, constants: dict) -> dict:
        """Test metrics of the selected parameters, at the end of the run."""


EXAMPLE_ROWS = 64  # rows of a serving function's stored example


@dataclasses.dataclass(frozen=True)
class ServingFunction:
    """``fn(params, constants, *inputs)``, pure; ``inputs`` names each input's shape (None = the
    batch dimension, a str another dimension of any size) and dtype. ``constants``: arrays only
    serving needs (e.g. the text encoder's weights), added to the bundle's constants; ``meta``:
    what a client needs to prepare the inputs (written to the manifest); ``example``: real inputs
    (e.g. held-out test histories) that export runs in process and stores with the outputs, so a
    copied bundle can check itself on its new machine (``Bundle.self_check``)."""
    fn: Callable
    inputs: dict[str, tuple[tuple[int | str | None, ...], Any]]
    doc: str = ""
    constants: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)
    example: tuple = ()

    def abstract_inputs(self, batch: int) -> list[jax.ShapeDtypeStruct]:
        return [jax.ShapeDtypeStruct(tuple(batch if d is None else d for d in shape), dtype)
                for shape, dtype in self.inputs.values()]


@runtime_checkable
class Servable(Protocol):
    def serving_functions(self) -> dict[str, ServingFunction]: ...


# Task name → "module:class", imported when used so one task's dependencies never load for another.
TASKS = {
    "user_tokenizer": "u2qt.tasks.user_tokenizer:UserTokenizerTask",
    "item_tokenizer": "u2qt.tasks.item_tokenizer:ItemTokenizerTask",
    "recommender": "u2qt.tasks.recommender:make_recommender",
    "generative_retrieval": "u2qt.tasks.generative:GenerativeRetrievalTask",
    "efficientrec": "u2qt.tasks.efficientrec:EfficientRecTask",
    "federated": "u2qt.tasks.federated:FederatedRecTask",
}


def make_task(cfg, cache_dir: str, log=print) -> Task:
    if cfg.task not in TASKS:
        raise ValueError(f"config task={cfg.task!r} is unknown; known: {sorted(TASKS)}")
    module, _, name = TASKS[cfg.task].partition(":")
    return getattr(importlib.import_module(module), name)(cfg, cache_dir, log)
