"""Shared test set-up: paths to the repo and the shared data, one compilation cache per session."""
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache shared by the training tests of this session (and their subprocesses)."""
    path = str(tmp_path_factory.mktemp("jax_cache"))
    os.environ["U2QT_JAX_CACHE"] = path
    from u2qt.train.workdir import enable_compilation_cache
    enable_compilation_cache(path)
    return path


def shared_data(name: str) -> str:
    path = os.path.join(SHARED_DATA, name)
    if not os.path.isdir(path):
        pytest.skip(f"{path} is absent (the shared real data sets live in ../shared/data)")
    return path
