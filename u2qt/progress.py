"""Progress of a long step (training, text embedding, evaluation), the same way everywhere.

On a terminal it is a tqdm bar. Anywhere else (a log file, a pipe, CI) a bar would flood the
output with carriage returns, so it becomes a plain log line at most every ``every_s`` seconds,
with the rate and the time left, and one line when the step ends.
"""
from __future__ import annotations

import sys
import time
from typing import Callable


def on_terminal() -> bool:
    return sys.stderr.isatty()


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """``update(n)`` after each piece of work; ``close()`` at the end (or use it as a context)."""

    def __init__(self, total: int, desc: str, unit: str, log: Callable[[str], None] = print,
                 initial: int = 0, every_s: float = 30.0, bar: bool | None = None):
        self.total, self.desc, self.unit, self.log, self.every_s = total, desc, unit, log, every_s
        self.done = self.start_done = initial
        self.t0 = self.t_last = time.time()
        self.bar = None
        if on_terminal() if bar is None else bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=f" {unit}", dynamic_ncols=True)

    def rate(self) -> float:
        return (self.done - self.start_done) / max(time.time() - self.t0, 1e-9)

    def line(self, extra: str = "") -> str:
        rate = self.rate()
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = duration(left) if left != float("inf") else "?"
        return (f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({self.done / max(self.total, 1):.0%}), "
                f"{rate:,.1f} {self.unit}/s, {eta} left" + (f"; {extra}" if extra else ""))

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.time()
        if now - self.t_last >= self.every_s and self.done < self.total:
            self.t_last = now
            self.log(self.line(extra))

    def postfix(self, **values) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elapsed = time.time() - self.t0
        if self.done > self.start_done:
            self.log(f"{self.desc}: {self.done - self.start_done:,} {self.unit} in {duration(elapsed)} "
                     f"({self.rate():,.1f} {self.unit}/s)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
