"""Shared test set-up: paths to the repo and the shared data, one compilation cache per session."""
import fcntl
import os
import pathlib
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache shared by the training tests of this session (and their subprocesses)
    and, under pytest-xdist, by every worker of the run: a program one worker compiled, the other
    reads (JAX writes an entry whole before it is used; an entry read while another process
    writes it is a cache miss with a warning, never a wrong program)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp is <run>/popen-gwN
        base = base.parent
    path = os.path.join(str(base), "jax_cache")
    os.makedirs(path, exist_ok=True)
    os.environ["U2QT_JAX_CACHE"] = path
    from u2qt.train.workdir import enable_compilation_cache
    enable_compilation_cache(path)
    return path


def built_once(tmp_path_factory, name: str, build) -> pathlib.Path:
    """The directory ``name``, filled by ``build(path)`` once per test session: under pytest-xdist
    the first worker to ask builds it (the other waits on a file lock) and both use it, where a
    module-scoped fixture would be built by each worker that runs a test of the module. A build
    that raised leaves nothing marked built (the next to ask builds again). Users must treat the
    directory as read-only (copy it to change it): the other worker may be reading it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp is <run>/popen-gwN
        base = base.parent
    path = base / name
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / ".built").exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            build(path)
            (path / ".built").touch()
    return path


def pytest_configure(config):
    """Under pytest-xdist, hand out one test at a time (``--maxschedchunk=1`` unless given).
    xdist's default ``load`` schedule first sends each worker a block of consecutive tests
    (a quarter of its share: 84 of 679 with ``-n 2``), so every ``heavy`` test, sorted first,
    landed in worker 0's block: it ran them all one after the other while worker 1 ran the
    light tests and then waited (the suite used 157% of the 2 cores). One at a time, the two
    workers take the heavy tests in turn, then the light ones."""
    if getattr(config.option, "maxschedchunk", "absent") is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(config, items):
    """Tests marked ``heavy`` (whole training runs, minutes each) run first, so that with
    ``-n 2`` (the README's test command) the two workers share them instead of one worker
    finishing them alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


def shared_data(name: str) -> str:
    path = os.path.join(SHARED_DATA, name)
    if not os.path.isdir(path):
        pytest.skip(f"{path} is absent (the shared real data sets live in ../shared/data)")
    return path


def lower_train_step(cfg, with_hparams: bool = False):
    """The real train step of ``cfg`` lowered (not compiled) at its batch shape, on one device:
    (lowered, task, optimizer, a 2-row sample, constants). ``with_hparams``: with the loop's
    ``constants["hparams"]`` (u2qt/train/step.py) as inputs."""
    import jax
    import jax.numpy as jnp
    from u2qt.tasks.core import make_task
    from u2qt.train.step import hparams, init_state, make_optimizer, make_train_step
    task = make_task(cfg, cfg.data.cache_dir, log=lambda *_: None)
    constants = {k: jnp.asarray(v) for k, v in task.constants.items()}
    if with_hparams:
        constants["hparams"] = {k: jnp.asarray(v) for k, v in hparams(cfg).items()}
    b = cfg.train.batch_size
    sample = {k: jax.ShapeDtypeStruct((b,) + v.shape[1:], v.dtype) for k, v in task.examples.items()
              if k in task.model_keys}
    tx = make_optimizer(cfg, task)
    small = {k: jnp.asarray(v[:2]) for k, v in task.examples.items() if k in task.model_keys}
    state = jax.eval_shape(lambda key: init_state(task, tx, cfg, key, small, constants), jax.random.key(0))
    return jax.jit(make_train_step(task, tx, cfg)).lower(state, sample, constants), task, tx, small, constants
