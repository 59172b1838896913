"""Example rows as a TFDS data set in array_record files (no TensorFlow needed).

`build_data_source(examples, data_dir, fingerprint)` writes the examples once, under
`data_dir/examples/<fingerprint>/1.0.0/`, and returns a random-access data source
(`len` = number of rows; element i = dict of numpy arrays of row i: a user, an item, a sequence) for `grain.MapDataset.source`.
A second call with the same fingerprint reuses the files. TFDS writes into a temporary
`*.incomplete*` directory and renames it only when everything is written, so an interrupted build
leaves no half-written data set behind; the next call builds it again. Concurrent calls for the
same fingerprint (two runs started together on one cache directory) take turns on a lock file:
the first builds, the others then find the data set prepared and read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds

VERSION = "1.0.0"


def examples_fingerprint(examples: dict[str, np.ndarray]) -> str:
    """A short hash of the examples' keys, shapes, dtypes and contents: a natural cache key.
    Streamed examples (``u2qt/data/stream.py``) carry the one computed while they were written."""
    if getattr(examples, "fingerprint", None):
        return examples.fingerprint
    h = hashlib.sha1()
    for k in sorted(examples):
        v = np.ascontiguousarray(examples[k])
        h.update(f"{k}:{v.dtype.str}:{v.shape};".encode())
        h.update(v.tobytes())  # (memoryview.cast fails on zero-size arrays, e.g. no numeric fields)
    return h.hexdigest()[:16]


class Examples(tfds.core.GeneratorBasedBuilder):
    """One record per example row (a user, an item, a training sequence): a dict of arrays."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Example rows (u2qt/data/README.md)."}
    # Nothing is downloaded, so there is no checksums file next to the code. Finding the code's
    # path needs the `importlib_resources` package, which is not always installed.
    code_path = None

    def __init__(self, *, examples: dict[str, np.ndarray], **kwargs):
        self._examples = examples
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict({
            k: tfds.features.Tensor(shape=v.shape[1:], dtype=v.dtype)
            for k, v in sorted(self._examples.items())
        })
        # disable_shuffling: record i stays row i (TFDS otherwise orders records by a key hash).
        return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    # TFDS announces "Downloading and preparing dataset Unknown size (download: ...)" although
    # nothing is downloaded; say what happens instead.
    def _log_download_bytes(self) -> None:
        rows = len(next(iter(self._examples.values())))
        print(f"data: writing the {rows:,} example rows once as array_record files in {self.data_dir}", flush=True)

    def _log_download_done(self) -> None:
        print(f"data: example files written; later runs on the same examples read {self.data_dir}", flush=True)

    def _generate_examples(self):
        n = len(next(iter(self._examples.values())))
        for i in range(n):
            yield i, {k: v[i] for k, v in self._examples.items()}


class ExampleSource:
    """Random-access view of the prepared records: element i = {key: numpy array} of row i.

    TFDS decodes scalar features to Python numbers; this restores each key's numpy dtype.
    """

    def __init__(self, source, dtypes: dict[str, np.dtype]):
        self._source = source
        self._dtypes = dtypes

    def __len__(self) -> int:
        return len(self._source)

    def _typed(self, record) -> dict[str, np.ndarray]:
        return {k: np.asarray(record[k], dtype=d) for k, d in self._dtypes.items()}

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self._typed(self._source[index])

    def __getitems__(self, indices) -> list[dict[str, np.ndarray]]:
        return [self._typed(r) for r in self._source.__getitems__(list(indices))]

    def __repr__(self) -> str:
        return f"ExampleSource({self._source!r})"


def _config_name(fingerprint: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", fingerprint)
    if not name:
        raise ValueError("fingerprint must be a non-empty string")
    return name


@contextlib.contextmanager
def build_lock(data_dir: str, fingerprint: str):
    """An exclusive lock (flock on `data_dir/examples-<fingerprint>.lock`) held while a data set
    is checked and built, so concurrent builders of the same fingerprint do not race on the rename."""
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f"examples-{_config_name(fingerprint)}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_data_source(examples: dict[str, np.ndarray], data_dir: str, fingerprint: str):
    """Writes `examples` as array_record (once per fingerprint) and returns the random-access source.
    Streamed examples are array_record files already: their own source, nothing is written."""
    if hasattr(examples, "source"):
        return examples.source()
    sizes = {k: len(v) for k, v in examples.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"examples must share their leading dimension, got {sizes}")
    with build_lock(data_dir, fingerprint):  # the builder reads the data set's info: build it under the lock too
        builder = Examples(
            examples=examples,
            data_dir=os.fspath(data_dir),
            config=tfds.core.BuilderConfig(name=_config_name(fingerprint)),
            file_format="array_record",
        )
        if not builder.is_prepared():
            tfds.disable_progress_bar()  # a run's own progress bar is the one worth reading
            builder.download_and_prepare(file_format="array_record")
    source = builder.as_data_source(split="train")
    if len(source) != next(iter(sizes.values())):
        raise ValueError(
            f"{builder.data_dir}: holds {len(source)} examples, expected {next(iter(sizes.values()))}; "
            "the fingerprint is reused for different data"
        )
    return ExampleSource(source, {k: np.dtype(v.dtype) for k, v in sorted(examples.items())})
