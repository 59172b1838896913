"""Where arrays live: the mesh, the sharding rules of the train state, and moving batches between
the host and the devices.

The mesh is (data, model) = (devices / ``mesh.model``, ``mesh.model``). Batches are split over
"data" and replicated over "model"; parameters are replicated, except the large tables that the
rules below (``RULES``, the one place they live) split over "model": item-ID embeddings and
full-softmax output tables by rows, codebook stacks of ``CODEBOOK_MIN_CODES`` or more codes by
code. The optimizer state and the best-so-far parameters follow their parameter. With
``mesh.model`` = 1 (the default) the mesh is (devices, 1) and everything is as before: data
parallel, parameters replicated.

The same code serves one process or many: the mesh lists the devices process by process, so
process p of P holds rows [p·B/P, (p+1)·B/P) of every global batch of B rows, and each process
builds only those rows (``process_rows``); the global batch is the one a single process builds.
Each process's devices are whole rows of the mesh (all "model" positions of some "data"
positions), so a model-sharded table never spans processes.
"""
from __future__ import annotations

import dataclasses
import math
import re

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from u2qt.errors import ConfigError
from u2qt.train import distributed

DATA, MODEL = "data", "model"

# A codebook stack [L, K, D] is split over its K codes only from this many codes on. Below it a
# stack is small (16,384 codes × D=256 × 4 B = 16 MiB per level, its Adam moments twice that) and
# every device holding it whole costs less than what splitting adds: each quantization step must
# combine the nearest code of every shard across the "model" axis (and the nearest-code kernels
# gather a sharded codebook whole today). Around 16k+ codes (and 64k+ in the large
# tokenizers) the table and its two moments dominate a device's memory and splitting pays.
CODEBOOK_MIN_CODES = 16_384
# With mesh.model > 1, a parameter of more elements than this that no rule covers is named in the
# log: it is replicated on every device, which may be what runs out of memory (MaxText checks the
# same). 2^20 float32 = 4 MiB, ×3 with its Adam moments.
UNRULED_MAX_ELEMENTS = 1 << 20


@dataclasses.dataclass(frozen=True)
class Rule:
    """Parameters whose path ("a/b/c", Flax's nesting) fully matches ``pattern`` are split as the
    first of ``specs`` whose split dimensions divide evenly by mesh.model and hold at least
    ``min_size`` entries (a number, or the name of a constant of this module, read when planning
    so that a test can lower it); when none does, the parameter stays replicated and the log says
    why."""
    pattern: str
    specs: tuple[P, ...]
    what: str
    min_size: int | str = 0


# Item tables split by rows first (the gather of a batch's rows and the [positions, I+1] logits of
# the full softmax then stay split by item; XLA combines the softmax's sums across "model"); when
# I+1 rows do not divide by mesh.model, by columns (the same memory per device, more traffic: the
# logits' partial sums are added across "model").
ITEM_TABLE = (P(MODEL, None), P(None, MODEL))
RULES = (
    Rule(r"(.+/)?id_embedding", ITEM_TABLE, "item-ID embedding [I+1, d] (SASRec, unified model)"),
    Rule(r"(.+/)?item_embedding(/embedding)?", ITEM_TABLE, "item-ID embedding [I+1, d]"),
    Rule(r"(.+/)?item_output", ITEM_TABLE, "full-softmax output table [I+1, d]"),
    Rule(r"(.+/)?codebooks_[A-Za-z0-9_]+", (P(None, MODEL, None),), "codebook stack [L, K, D]",
         min_size="CODEBOOK_MIN_CODES"),
)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the rules decided for one parameter: ``spec`` (P() = replicated), the rule that
    covered it (None: no rule did) and, when a rule covered it but it stays replicated, why."""
    path: str
    shape: tuple[int, ...]
    spec: P
    rule: Rule | None = None
    note: str = ""

    @property
    def sharded(self) -> bool:
        return any(axis is not None for axis in self.spec)


def path_name(path) -> str:
    """A pytree path → "a/b/c" from its dict keys (and attribute names) only."""
    names = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            names.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            names.append(key.name)
    return "/".join(names)


def _fits(spec: P, shape, model: int, min_size: int) -> str:
    """"" when ``spec`` can split ``shape`` over ``model`` devices, else why not."""
    if len(spec) > len(shape):
        return f"has {len(shape)} dimensions"
    for dim, axis in enumerate(spec):
        if axis is None:
            continue
        if shape[dim] < min_size:
            return f"dimension {dim} holds {shape[dim]:,} < {min_size:,} entries"
        if shape[dim] % model:
            return f"dimension {dim} ({shape[dim]:,}) does not divide by mesh.model={model}"
    return ""


def plan(params, model: int) -> dict[str, Decision]:
    """{path: Decision} for every leaf of ``params`` (arrays or shapes) on a "model" axis of
    ``model`` devices. With model = 1 every rule applies (the specs name an axis of size 1)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name, shape = path_name(path), tuple(leaf.shape)
        rule = next((r for r in RULES if re.fullmatch(r.pattern, name)), None)
        if rule is None:
            out[name] = Decision(name, shape, P())
            continue
        reasons = []
        min_size = globals()[rule.min_size] if isinstance(rule.min_size, str) else rule.min_size
        for spec in rule.specs:
            why = _fits(spec, shape, model, min_size)
            if not why:
                out[name] = Decision(name, shape, spec, rule)
                break
            reasons.append(f"{tuple(spec)}: {why}")
        else:
            out[name] = Decision(name, shape, P(), rule, "; ".join(reasons))
    return out


def _follow(path, leaf, decisions: dict[str, Decision]) -> Decision | None:
    """The parameter a state leaf belongs to: the longest tail of its path that names a parameter
    of the same shape (its optimizer moments, its best-so-far copy), or None."""
    names = path_name(path).split("/")
    for start in range(len(names)):
        d = decisions.get("/".join(names[start:]))
        if d is not None and tuple(getattr(leaf, "shape", ())) == d.shape:
            return d
    return None


def describe(decisions: dict[str, Decision], model: int, log=print) -> None:
    """Logs what is split, what a rule covers but leaves replicated (and why), and the large
    parameters that no rule covers."""
    for d in decisions.values():
        if d.sharded:
            log(f"sharding: {d.path} {list(d.shape)} split as {tuple(d.spec)} over mesh.model={model} ({d.rule.what})")
        elif d.rule is not None:
            log(f"sharding: {d.path} {list(d.shape)} stays replicated, though a rule covers it "
                f"({d.rule.what}): {d.note}")
    unruled = [d for d in decisions.values() if d.rule is None and math.prod(d.shape) > UNRULED_MAX_ELEMENTS]
    if unruled:
        log(f"sharding: {len(unruled)} parameter(s) over {UNRULED_MAX_ELEMENTS:,} elements that no rule covers stay "
            f"replicated on every device: " + ", ".join(f"{d.path} {list(d.shape)}" for d in unruled)
            + " (the rules: u2qt/train/sharding.py RULES)")


class Placement:
    """The run's mesh, the shardings of batches and of the train state, and host ↔ device moves
    of batches."""

    def __init__(self, batch_size: int, model: int = 1):
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        if model < 1 or len(devices) % model:
            raise ConfigError(f"config mesh.model={model} must divide the {len(devices)} devices "
                              f"(the mesh is data × model = devices / mesh.model × mesh.model)")
        local = len(jax.local_devices())
        if jax.process_count() > 1 and local % model:
            raise ConfigError(f"config mesh.model={model} must divide the {local} devices of each process: "
                              f"a table split over \"model\" must not span processes")
        self.model = model
        self.data = len(devices) // model
        self.mesh = jax.make_mesh((self.data, model), (DATA, MODEL), axis_types=(jax.sharding.AxisType.Auto,) * 2,
                                  devices=devices)
        self.devices = list(self.mesh.devices.flat)
        self._check_process_blocks()
        self.replicated = NamedSharding(self.mesh, P())
        self.batch = NamedSharding(self.mesh, P(DATA))
        self.batch_size = batch_size
        self.decisions: dict[str, Decision] = {}

    def _check_process_blocks(self) -> None:
        """Each process's devices must fill whole, consecutive rows of the mesh (the data
        positions p·D/P .. (p+1)·D/P - 1 for process p), or process_rows would not hold."""
        grid = np.vectorize(lambda d: d.process_index)(self.mesh.devices)
        per = self.data // jax.process_count()
        for p in range(jax.process_count()):
            rows = np.flatnonzero((grid == p).any(1))
            if not ((grid[rows] == p).all() and list(rows) == list(range(p * per, (p + 1) * per))):
                raise AssertionError(f"the mesh {grid.tolist()} (process of each device) does not give "
                                     f"process {p} the consecutive data rows [{p * per}, {(p + 1) * per})")

    # ------------------------------------------------------------------ the train state
    def state_shardings(self, abstract_state, log=print):
        """Shardings of every leaf of a train state (shapes suffice): each parameter as ``plan``
        decides, its optimizer moments and best-so-far copy alike, all else replicated. Logs what
        is split and what the rules leave replicated, and names large parameters no rule covers."""
        params = abstract_state["params"] if isinstance(abstract_state, dict) and "params" in abstract_state \
            else abstract_state
        self.decisions = plan(params, self.model)
        if self.model > 1:
            describe(self.decisions, self.model, log)

        def sharding(path, leaf):
            d = _follow(path, leaf, self.decisions)
            return NamedSharding(self.mesh, d.spec) if d is not None else self.replicated

        return jax.tree_util.tree_map_with_path(sharding, abstract_state)

    def check_state(self, state, where: str) -> None:
        """Raises naming every array of ``state`` that a rule meant to split over "model" (its
        parameter's decision is split) but that is laid out otherwise (replicated, or another
        spec): a layout bug, which would silently cost memory on every device."""
        wrong = []
        for path, leaf in jax.tree_util.tree_leaves_with_path(state):
            d = _follow(path, leaf, self.decisions)
            if d is None or not d.sharded:
                continue
            spec = getattr(getattr(leaf, "sharding", None), "spec", None)
            if spec is None or tuple(spec) + (None,) * (len(d.shape) - len(spec)) != \
                    tuple(d.spec) + (None,) * (len(d.shape) - len(d.spec)):
                wrong.append(f"{jax.tree_util.keystr(path)} (meant {tuple(d.spec)}, is "
                             f"{getattr(leaf, 'sharding', None)})")
        if wrong:
            raise AssertionError(f"{where}: {len(wrong)} array(s) meant to be split over \"model\" are not: "
                                 + "; ".join(wrong[:8]) + ("; ..." if len(wrong) > 8 else ""))

    # ------------------------------------------------------------------ batches
    def replicate(self, tree):
        return jax.device_put(tree, jax.tree.map(lambda _: self.replicated, tree))

    def process_rows(self, batch_size: int | None = None) -> slice:
        """The rows of a global batch that this process's devices hold (and that it builds)."""
        size = batch_size or self.batch_size
        share = size // jax.process_count()
        index = jax.process_index()
        held = sorted(i[0].indices(size)[:2] for i in self.batch.addressable_devices_indices_map((size,)).values())
        if held[0][0] != index * share or held[-1][1] != (index + 1) * share:  # the mesh's order, checked
            raise AssertionError(f"process {index} holds rows {held}, not [{index * share}, {(index + 1) * share})")
        return slice(index * share, (index + 1) * share)

    def to_device(self, host_batch: dict, keys, batch_size: int | None = None) -> dict:
        """A global batch that every process holds whole → a batch sharded over "data"; each
        process contributes its own rows."""
        rows = self.process_rows(batch_size)
        return {k: jax.make_array_from_process_local_data(self.batch, np.asarray(v[rows]))
                for k, v in host_batch.items() if k in keys}

    def local_to_device(self, local_batch: dict, keys) -> dict:
        """This process's slice of a global batch → the batch sharded over "data"."""
        return {k: jax.make_array_from_process_local_data(self.batch, np.asarray(local_batch[k])) for k in keys}

    to_host = staticmethod(distributed.to_host)
