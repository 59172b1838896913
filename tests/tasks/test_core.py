"""The task core and its capabilities: each task declares what it does, the train step does no
codebook work for a task without codebooks, and servable functions are the in-process ones."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, shared_data

from u2qt import config as config_lib
from u2qt.tasks.core import Evaluates, Servable, Task, Tokenizes, make_task
from u2qt.train.step import init_state, make_optimizer, make_train_step

TEXT_CACHE = os.environ.get("U2QT_TEXT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "u2qt", "amazon")


def _task(spec: str, tmp_path, **overrides):
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", spec))
    for key, value in overrides.items():
        config_lib.apply_override(cfg, key, value)
    return cfg, make_task(cfg, cfg.data.cache_dir or str(tmp_path), log=lambda *_: None)


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    return _task("default.py:runlocal", tmp_path_factory.mktemp("users"), **{"data.cache_dir": TEXT_CACHE})


@pytest.fixture(scope="module")
def office(tmp_path_factory):
    data = shared_data("amazon-office-2014")
    out = {}
    for variant in ("id", "unified"):
        out[variant] = _task(f"amazon.py:office,{variant},runlocal", tmp_path_factory.mktemp(variant),
                             **{"data.path": data, "data.cache_dir": TEXT_CACHE})
    return out


def test_each_task_declares_exactly_its_capabilities(users, office):
    declared = lambda task: {c.__name__ for c in (Tokenizes, Evaluates, Servable) if isinstance(task, c)}
    assert isinstance(users[1], Task) and declared(users[1]) == {"Tokenizes", "Servable"}
    assert declared(office["id"][1]) == {"Evaluates", "Servable"}  # no codebooks, no placeholders
    assert not hasattr(office["id"][1], "stacks") and not hasattr(office["id"][1], "rows")
    assert declared(office["unified"][1]) == {"Tokenizes", "Evaluates", "Servable"}


def _step_shapes(cfg, task):
    """The state and metrics of one train step, traced (shapes only, nothing compiled)."""
    constants = {k: jnp.asarray(v) for k, v in task.constants.items()}
    sample = {k: jnp.asarray(v[:cfg.train.batch_size]) for k, v in task.examples.items() if k in task.model_keys}
    tx = make_optimizer(cfg, task)
    state = jax.eval_shape(lambda k: init_state(task, tx, cfg, k, sample, constants), jax.random.key(0))
    return jax.eval_shape(make_train_step(task, tx, cfg), state, sample, constants)


def test_a_task_without_codebooks_gets_no_codebook_upkeep(office):
    state, metrics = _step_shapes(*office["id"])
    assert "usage" not in state and not any(k.startswith("dead_") for k in metrics)
    state, metrics = _step_shapes(*office["unified"])
    assert set(state["usage"]) == {"item"} and "dead_item" in metrics


def test_servable_functions_give_the_in_process_outputs(users, office):
    cfg, task = users
    constants = {k: jnp.asarray(v) for k, v in task.constants.items()}
    rows = {k: jnp.asarray(v[:16]) for k, v in task.rows.items() if k in task.model_keys}
    state = init_state(task, make_optimizer(cfg, task), cfg, jax.random.key(0), rows, constants)
    serve = task.serving_functions()["tokens"]
    got = serve.fn(state["params"], constants, *[rows[k] for k in serve.inputs])
    want = task.encode(state["params"], rows, constants).codes
    assert set(got) == set(task.stacks)
    for view in task.stacks:
        np.testing.assert_array_equal(np.asarray(got[view]), np.asarray(want[view]))
    # The declared specs describe the inputs: any batch size traces.
    shapes = jax.eval_shape(serve.fn, state["params"], constants, *serve.abstract_inputs(3))
    assert {v: s.shape for v, s in shapes.items()} == {v: (3, levels) for v, (levels, _) in task.stacks.items()}

    cfg, task = office["id"]
    constants = {k: jnp.asarray(v) for k, v in task.constants.items()}
    sample = {k: jnp.asarray(v[:8]) for k, v in task.examples.items() if k in task.model_keys}
    params = init_state(task, make_optimizer(cfg, task), cfg, jax.random.key(0), sample, constants)["params"]
    serve = task.serving_functions()["top_k"]
    history = jnp.asarray(task.test_cases.history[:8])
    scores, items = serve.fn(params, constants, history)
    full = np.asarray(task._scores(params, None, history))
    assert items.shape == (8, cfg.eval.top_k) and (np.asarray(items) > 0).all()  # padding never recommended
    np.testing.assert_allclose(np.asarray(scores), np.sort(full, 1)[:, ::-1][:, :cfg.eval.top_k], rtol=1e-6)
