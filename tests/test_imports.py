"""The house's import direction: every module imports only its own layer or the ones below it,
and no chain of imports comes back to where it started.

Layers, bottom to top (README, "Layout"):
    errors  →  defaults, files, prep  →  progress, config, kernels, serving  →  text  →  data  →  nn  →  losses  →  quant
    →  models  →  eval  →  tasks  →  train, export, sweep
"""
import ast
import os

import pytest

from conftest import REPO

LAYERS = [("u2qt.errors",), ("u2qt.defaults", "u2qt.files", "u2qt.prep"), ("u2qt.progress", "u2qt.config", "u2qt.kernels", "u2qt.serving"),
          ("u2qt.text",), ("u2qt.data",), ("u2qt.nn",), ("u2qt.losses",), ("u2qt.quant",), ("u2qt.models",),
          ("u2qt.eval",), ("u2qt.tasks",), ("u2qt.train", "u2qt.export", "u2qt.sweep")]


def _modules() -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(os.path.join(REPO, "u2qt")):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


def _imports(path: str, modules) -> set[str]:
    """The u2qt modules a file imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule; `from mod import name` the module.
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("u2qt.") or name == "u2qt":
                found.add(name)
    return found


def _layer(module: str) -> tuple[int, str]:
    for rank, group in enumerate(LAYERS):
        for unit in group:
            if module == unit or module.startswith(unit + "."):
                return rank, unit
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and to the README's layout")


MODULES = _modules()
GRAPH = {m: _imports(p, MODULES) - {m, "u2qt"} for m, p in MODULES.items()}


def test_every_module_belongs_to_a_layer():
    for module in MODULES:
        if module != "u2qt":
            _layer(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "u2qt"))
def test_no_import_runs_back_up(module):
    rank, unit = _layer(module)
    upward = [m for m in sorted(GRAPH[module]) if _layer(m)[0] > rank
              or (_layer(m)[0] == rank and _layer(m)[1] != unit)]
    assert not upward, f"{module} (layer {unit}) imports {upward} from a layer above or beside it"


def test_no_import_cycles():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " → ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
