"""The errors a user can cause, and the one way every command reports them.

Every expected failure (a bad config, bad data, a workdir that cannot be used, a run that went
non-finite, a disk that is full or read-only) is one of the classes below, or an ``OSError`` of
the storage kinds in ``STORAGE_ERRNOS``. ``cli_exit`` turns each into one line on stderr and
exit status 2; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import sys
from typing import Callable


class U2qtError(Exception):
    """An expected error; its message says what is wrong and where."""


class ConfigError(U2qtError, ValueError):
    """A config file, key or value that cannot be used; the message says which and why."""


class DataError(U2qtError, ValueError):
    """Input data that cannot be used; the message names the file (line, column) and the problem."""


class WorkdirError(U2qtError):
    """A workdir that cannot be used for this run: in use, holding another run or other data."""


class NonFiniteError(U2qtError, FloatingPointError):
    """NaN/Inf in the data, a batch or the train state; the message names where."""


# A full disk, a quota, a read-only file system, no permission: the user's storage, not a bug.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error(exc: BaseException) -> OSError | None:
    """The storage ``OSError`` behind ``exc`` (itself, or its cause or context: Orbax and
    TensorStore wrap the errors of their writer threads), if there is one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def message(exc: BaseException) -> str | None:
    """The one-line message of an expected error; None for anything else (a bug)."""
    if isinstance(exc, U2qtError):
        return str(exc)
    storage = storage_error(exc)
    if storage is not None:
        where = f" {storage.filename!r}" if storage.filename else ""
        return (f"cannot write{where}: {storage.strerror or storage} (errno {storage.errno}); free space or use "
                f"a writable --workdir; the last complete checkpoint stays the resume point")
    if isinstance(exc, FileNotFoundError):
        return str(exc)
    return None


def cli_exit(main: Callable[[], int | None]) -> int:
    """Runs a command's ``main()`` and returns its exit status: expected errors print
    ``error: <message>`` on stderr and give 2; Ctrl-C gives 130; anything else propagates."""
    try:
        return main() or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 — sorted into expected and unexpected just below
        text = message(exc)
        if text is None:
            raise
        print(f"error: {text}", file=sys.stderr)
        return 2
