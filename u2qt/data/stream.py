"""Example rows larger than memory: written once, chunk by chunk, as sharded array_record files,
and read back lazily (see README.md, "Data larger than memory").

``write_examples(directory, chunks)`` packs every row into one fixed-layout record (each key's
bytes, in key order: decoded with one ``np.frombuffer`` per batch), starts a new shard every
``rows_per_shard`` rows, hashes the rows while writing, and writes ``manifest.json`` last and
atomically: a directory without a manifest is an interrupted build, which ``open_or_build``
removes and builds again. ``StreamedExamples`` is the lazy mapping the loop reads like the
in-memory dict of arrays: every column has ``shape``, ``dtype``, ``len``, ``nbytes``, and
slicing or fancy indexing reads the files (the last slice read is kept, so the columns of one
in-order batch cost one read). ``StreamedExamples.source()`` is grain's random-access source.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
from array_record.python import array_record_module as ar

from u2qt import files
from u2qt.data.tables import DataError

MANIFEST = "manifest.json"
LAYOUT_VERSION = 1
# group_size:1: a random read decodes one record, not a group. Uncompressed: the rows are mostly
# float32 features, which compress poorly, and zstd would cost a decode per read.
WRITER_OPTIONS = "group_size:1,uncompressed"
READER_OPTIONS = "readahead_buffer_size:0"


class Layout:
    """The fixed per-row record: the keys in sorted order, each its dtype and row shape."""

    def __init__(self, shapes: Mapping[str, tuple], dtypes: Mapping[str, np.dtype]):
        self.keys = sorted(shapes)
        self.shapes = {k: tuple(int(d) for d in shapes[k]) for k in self.keys}
        self.dtypes = {k: np.dtype(dtypes[k]) for k in self.keys}
        sizes = [int(np.prod(self.shapes[k], dtype=np.int64)) * self.dtypes[k].itemsize for k in self.keys]
        self.offsets = dict(zip(self.keys, np.cumsum([0] + sizes[:-1]).tolist()))
        self.sizes = dict(zip(self.keys, sizes))
        self.row_bytes = int(sum(sizes))

    @classmethod
    def of(cls, chunk: Mapping[str, np.ndarray]) -> "Layout":
        return cls({k: np.shape(v)[1:] for k, v in chunk.items()}, {k: np.asarray(v).dtype for k, v in chunk.items()})

    def to_json(self) -> dict:
        return {"keys": self.keys, "shapes": {k: list(v) for k, v in self.shapes.items()},
                "dtypes": {k: v.str for k, v in self.dtypes.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "Layout":
        return cls({k: tuple(v) for k, v in d["shapes"].items()}, {k: np.dtype(v) for k, v in d["dtypes"].items()})

    def pack(self, chunk: Mapping[str, np.ndarray]) -> np.ndarray:
        """[n, row_bytes] uint8: row i is the record of row i."""
        n = len(next(iter(chunk.values())))
        out = np.empty((n, self.row_bytes), np.uint8)
        for k in self.keys:
            v = np.ascontiguousarray(chunk[k], dtype=self.dtypes[k])
            if v.shape != (n,) + self.shapes[k]:
                raise ValueError(f"chunk key {k!r} has shape {v.shape}, expected {(n,) + self.shapes[k]}")
            out[:, self.offsets[k]:self.offsets[k] + self.sizes[k]] = v.reshape(n, -1).view(np.uint8)
        return out

    def unpack(self, packed: np.ndarray) -> dict[str, np.ndarray]:
        """[n, row_bytes] uint8 → {key: [n, ...]} (copies: the arrays own their memory)."""
        n = len(packed)
        return {k: packed[:, self.offsets[k]:self.offsets[k] + self.sizes[k]].copy().view(self.dtypes[k])
                .reshape((n,) + self.shapes[k]) for k in self.keys}


def _fingerprint_start(layout: Layout) -> "hashlib._Hash":
    h = hashlib.sha1()
    h.update(json.dumps(layout.to_json(), sort_keys=True).encode())
    return h


def write_examples(directory: str, chunks: Iterable[Mapping[str, np.ndarray]], *, rows_per_shard: int = 1 << 20,
                   extras: Callable[[], dict] | None = None, meta: Callable[[], dict] | None = None,
                   log: Callable[[str], None] = print) -> "StreamedExamples":
    """Writes the rows of ``chunks`` (dicts of arrays sharing their leading dimension, in row order)
    into ``directory`` and returns them opened. ``extras()`` (called after the last chunk) gives
    small per-row numpy arrays stored as ``.npy`` files beside the shards (e.g. planted labels);
    ``meta()`` (also called after the last chunk) is JSON stored in the manifest (e.g. the data
    set's spec, fitted on the first chunk)."""
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    layout, h = None, None
    shards: list[dict] = []
    writer, in_shard, rows = None, 0, 0

    def close_shard():
        nonlocal writer
        if writer is not None:
            if not writer.ok():
                raise DataError(f"{os.path.join(directory, shards[-1]['file'])}: writing the array_record shard failed")
            writer.close()
            shards[-1]["rows"] = in_shard
            writer = None

    for chunk in chunks:
        if layout is None:
            layout = Layout.of(chunk)
            h = _fingerprint_start(layout)
        packed = layout.pack(chunk)
        h.update(packed.tobytes())
        done = 0
        while done < len(packed):
            if writer is None:
                name = f"rows-{len(shards):05d}.array_record"
                writer = ar.ArrayRecordWriter(os.path.join(directory, name), WRITER_OPTIONS)
                shards.append({"file": name, "rows": 0})
                in_shard = 0
            take = min(len(packed) - done, rows_per_shard - in_shard)
            for row in packed[done:done + take]:
                writer.write(row.tobytes())
            done, in_shard, rows = done + take, in_shard + take, rows + take
            if in_shard == rows_per_shard:
                close_shard()
        log(f"data: {rows:,} example rows written to {directory}")
    close_shard()
    if layout is None:
        raise DataError(f"{directory}: no rows to write")
    extra_files = {}
    for name, value in (extras() if extras else {}).items():
        value = np.asarray(value)
        if len(value) != rows:
            raise ValueError(f"extra {name!r} has {len(value)} rows, the examples {rows}")
        np.save(os.path.join(directory, f"{name}.npy"), value)
        extra_files[name] = f"{name}.npy"
    manifest = {"version": LAYOUT_VERSION, "layout": layout.to_json(), "rows": rows, "shards": shards,
                "fingerprint": h.hexdigest()[:16], "extras": extra_files, "meta": meta() if meta else {}}
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f)
    files.atomic_write(os.path.join(directory, MANIFEST), write)  # last: its presence means the build is complete
    return StreamedExamples(directory)


@contextlib.contextmanager
def _lock(directory: str):
    """One builder per directory at a time (two runs started together on one cache directory)."""
    os.makedirs(os.path.dirname(os.path.abspath(directory)), exist_ok=True)
    with open(os.path.abspath(directory) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_or_build(directory: str, build: Callable[[], "StreamedExamples"], log: Callable[[str], None] = print
                  ) -> "StreamedExamples":
    """The examples in ``directory`` if a complete build is there (its manifest), else ``build()``
    (which writes them there, e.g. with ``write_examples``): an interrupted build is built again."""
    with _lock(directory):
        if os.path.isfile(os.path.join(directory, MANIFEST)):
            examples = StreamedExamples(directory)
            log(f"data: reading the {examples.rows:,} example rows written before in {directory}")
            return examples
        if os.path.exists(directory):
            log(f"data: {directory} holds an interrupted build (no {MANIFEST}); building it again")
        return build()


class StreamedColumn:
    """One key of ``StreamedExamples``: an array-like [rows, ...] whose reads go to the files."""

    def __init__(self, examples: "StreamedExamples", key: str):
        self._examples, self.key = examples, key
        layout = examples.layout
        self.dtype = layout.dtypes[key]
        self.shape = (examples.rows,) + layout.shapes[key]
        self.ndim = len(self.shape)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        return self._examples.read(index)[self.key]

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"StreamedColumn({self.key!r}, shape={self.shape}, dtype={self.dtype})"


class StreamedExamples(Mapping):
    """The rows of a ``write_examples`` directory as a read-only mapping key → ``StreamedColumn``."""

    def __init__(self, directory: str):
        self.directory = directory
        path = os.path.join(directory, MANIFEST)
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
            if manifest.get("version") != LAYOUT_VERSION:
                raise DataError(f"{path}: layout version {manifest.get('version')!r}, this code reads {LAYOUT_VERSION}")
            self.layout = Layout.from_json(manifest["layout"])
            self.rows = int(manifest["rows"])
            self.fingerprint = manifest["fingerprint"]
            self.meta = manifest["meta"]
            self._shards = [(s["file"], int(s["rows"])) for s in manifest["shards"]]
            self._extras = manifest["extras"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not a readable manifest of streamed examples ({e})") from None
        self._starts = np.cumsum([0] + [n for _, n in self._shards])
        if self._starts[-1] != self.rows:
            raise DataError(f"{path}: its shards hold {self._starts[-1]} rows, the manifest says {self.rows}")
        self._readers: list = [None] * len(self._shards)
        self._open_lock = threading.Lock()
        self._last: tuple | None = None  # (start, stop, rows read): the columns of one slice share a read
        self._columns = {k: StreamedColumn(self, k) for k in self.layout.keys}

    # ------------------------------------------------------------------ Mapping
    def __getitem__(self, key: str) -> StreamedColumn:
        return self._columns[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    def __repr__(self) -> str:
        return f"StreamedExamples({self.directory!r}, {self.rows:,} rows, {len(self._shards)} shards)"

    @property
    def extras(self) -> list[str]:
        return list(self._extras)

    @property
    def nbytes(self) -> int:
        return self.rows * self.layout.row_bytes

    def extra(self, name: str, mmap: bool = True) -> np.ndarray:
        """A per-row array stored beside the shards (``write_examples(extras=)``), memory-mapped."""
        return np.load(os.path.join(self.directory, self._extras[name]), mmap_mode="r" if mmap else None)

    # ------------------------------------------------------------------ reading
    def _reader(self, s: int):
        if self._readers[s] is None:
            with self._open_lock:
                if self._readers[s] is None:
                    path = os.path.join(self.directory, self._shards[s][0])
                    reader = ar.ArrayRecordReader(path, READER_OPTIONS)
                    if not reader.ok():
                        raise DataError(f"{path}: cannot open the array_record shard (missing or not an "
                                        f"array_record file); delete {self.directory} to build the examples again")
                    if reader.num_records() != self._shards[s][1]:
                        raise DataError(f"{path}: holds {reader.num_records()} records, the manifest says "
                                        f"{self._shards[s][1]}; delete {self.directory} to build the examples again")
                    self._readers[s] = reader
        return self._readers[s]

    def _read_shard(self, s: int, positions: np.ndarray | None, start: int = 0, stop: int = 0) -> list[bytes]:
        path = os.path.join(self.directory, self._shards[s][0])
        reader = self._reader(s)
        try:  # one reader serves concurrent reads (grain's ArrayRecordDataSource shares them across threads too)
            records = reader.read(positions.tolist()) if positions is not None else reader.read(start, stop)
        except RuntimeError as e:
            raise DataError(f"{path}: corrupt array_record shard ({e}); delete {self.directory} to build the "
                            f"examples again") from None
        bad = [len(r) for r in records if len(r) != self.layout.row_bytes]
        if bad:
            raise DataError(f"{path}: a record of {bad[0]} bytes where every row has {self.layout.row_bytes}; "
                            f"delete {self.directory} to build the examples again")
        return records

    def _decode(self, records: list[bytes]) -> dict[str, np.ndarray]:
        packed = np.frombuffer(b"".join(records), np.uint8).reshape(len(records), self.layout.row_bytes)
        return self.layout.unpack(packed)

    def read_range(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows [start, stop) (clipped to the rows there are), one sequential read per shard."""
        start, stop = max(0, start), min(self.rows, max(start, stop))
        last = self._last
        if last is not None and last[0] == start and last[1] == stop:
            return last[2]
        records: list[bytes] = []
        s = max(0, int(np.searchsorted(self._starts, start, side="right")) - 1)
        while start + len(records) < stop:
            lo = start + len(records) - self._starts[s]
            hi = min(stop - self._starts[s], self._shards[s][1])
            records += self._read_shard(s, None, int(lo), int(hi))
            s += 1
        out = self._decode(records)
        self._last = (start, stop, out)
        return out

    def read_rows(self, rows) -> dict[str, np.ndarray]:
        """Rows at the given indices (negative ones count from the end), in that order."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if len(rows) and (rows.min() < -self.rows or rows.max() >= self.rows):
            raise IndexError(f"row indices must lie in [-{self.rows}, {self.rows})")
        rows = np.where(rows < 0, rows + self.rows, rows)
        shard = np.searchsorted(self._starts, rows, side="right") - 1
        records: list[bytes | None] = [None] * len(rows)
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            for j, r in zip(where, self._read_shard(int(s), rows[where] - self._starts[s])):
                records[j] = r
        return self._decode(records)

    def read(self, index) -> dict[str, np.ndarray]:
        """NumPy-style indexing of the rows: an int (one row, no leading dim), a slice, or indices."""
        if isinstance(index, slice):
            start, stop, step = index.indices(self.rows)
            if step == 1:
                return self.read_range(start, stop)
            return self.read_rows(np.arange(start, stop, step))
        if isinstance(index, (int, np.integer)):
            return {k: v[0] for k, v in self.read_rows([index]).items()}
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return self.read_rows(index)

    def source(self) -> "RowSource":
        return RowSource(self)


class RowSource:
    """grain's random-access source over the rows (element i = {key: row i}); a process reads only
    the rows its sampler asks for (``u2qt/data/pipeline.py``)."""

    def __init__(self, examples: StreamedExamples):
        self._examples = examples

    def __len__(self) -> int:
        return self._examples.rows

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self._examples.read(int(index))

    def __getitems__(self, indices) -> list[dict[str, np.ndarray]]:
        taken = self.read_batch(indices)
        return [{k: v[j] for k, v in taken.items()} for j in range(len(indices))]

    def read_batch(self, indices) -> dict[str, np.ndarray]:
        """The rows at ``indices`` stacked: one parallel array_record read per shard."""
        return self._examples.read_rows(np.asarray(indices, np.int64))

    def __repr__(self) -> str:
        return f"RowSource({self._examples!r})"
