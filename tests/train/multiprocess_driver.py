"""``python tests/train/multiprocess_driver.py RECORD_DIR TRAIN_ARGS... [--then TRAIN_ARGS...]``:
runs ``train.py`` with each TRAIN_ARGS in turn, in this one process (coordinator settings from the
U2QT_* environment or flags), and records for tests/train/test_multiprocess.py what this process
did in each run, in ``RECORD_DIR/process_<index>.json`` (a list, one entry per run):
  "status":  train.py's exit status;
  "read":    the indices of the streamed training examples it read (its data shard);
  "written": the files it opened for writing, renamed onto or removed (Python's audit events;
             Orbax's array data go through TensorStore, outside them, and are checkpoint files anyway).
"""
import json
import os
import sys

RECORD_DIR = sys.argv[1]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

written: list[str] = []
read: list[int] = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path, mode, flags = args
        if (mode and any(c in mode for c in "wax+")) or (not mode and flags & WRITE_FLAGS):
            written.append(os.path.abspath(os.fsdecode(path)))
    elif event in ("os.rename", "os.replace"):
        written.append(os.path.abspath(os.fsdecode(args[1])))
    elif event == "os.remove":
        written.append(os.path.abspath(os.fsdecode(args[0])))


class RecordedSource:
    """The streamed examples, with every index read noted."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        read.append(int(index))
        return self.source[index]

    def __getitems__(self, indices):
        read.extend(int(i) for i in indices)
        return self.source.__getitems__(indices)


def main() -> int:
    import importlib.util
    from u2qt.train import loop
    make_iterator = loop.make_train_iterator
    loop.make_train_iterator = lambda source, **kw: make_iterator(RecordedSource(source), **kw)
    spec = importlib.util.spec_from_file_location("train_cli", os.path.join(REPO, "train.py"))
    train_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_cli)
    sys.addaudithook(audit)
    runs, args = [], []
    for arg in sys.argv[2:] + ["--then"]:
        if arg != "--then":
            args.append(arg)
            continue
        status = train_cli.main(args)
        runs.append({"status": status, "read": list(read), "written": sorted(set(written))})
        read.clear(), written.clear(), args.clear()
        if status:
            break
    import jax
    with open(os.path.join(RECORD_DIR, f"process_{jax.process_index()}.json"), "w") as f:
        json.dump(runs, f)
    return max(run["status"] for run in runs)


if __name__ == "__main__":
    sys.exit(main())
