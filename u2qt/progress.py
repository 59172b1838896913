"""Progress of a long step (training, text embedding, evaluation), the same way everywhere.

On a terminal it is a tqdm bar. Anywhere else (a log file, a pipe, CI) a bar would flood the
output with carriage returns, so it becomes a plain log line at most every ``every_s`` seconds,
with the rate and the time left, and one line when the step ends.
"""
from __future__ import annotations

import atexit
import os
import subprocess
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


# ----------------------------------------------------------------------------- XLA's alarms
# XLA's C++ runtime prints an ``E…`` line and a starred block ("Very slow compile?  If you want to
# file a bug …") whenever one compile takes over 2 minutes, which on a small CPU is a healthy
# first compile. It cannot be switched off without hiding XLA's real errors too, so the command
# line tools pass what the C++ side writes to stderr through a small filter process that swaps
# each such block for one line saying what happens. Everything else passes unchanged; the filter
# is a separate process so that nothing is lost if this one dies. U2QT_XLA_ALARMS=show turns it off.
_ALARM_FILTER = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; keep draining until EOF
out, held, stars, buf = sys.stdout.buffer, [], 0, b""

def say(block):
    text = b"".join(block).decode("utf-8", "replace")
    if "slow compile" in text.lower():
        module = re.search(r"\[Compiling module ([^\]]+)\]", text)
        line = (f"XLA has been compiling {module.group(1) if module else 'one program'} for over 2 minutes; this "
                f"is XLA's 'Very slow compile?' alarm, normal for a first compile on a small CPU (the compile "
                f"cache makes the next run fast)")
    else:
        body = " ".join(l.strip() for l in text.splitlines()[1:] if l.strip() and not set(l.strip()) <= {"*"})
        line = f"XLA's slow-operation alarm (not an error): {body[:200]}"
    out.write(f"u2qt: {line}. U2QT_XLA_ALARMS=show prints XLA's own lines.\n".encode())


while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for line in (l + b"\n" for l in lines):
        if not held and b"slow_operation_alarm" in line:
            held, stars = [line], 0
            continue
        if held:
            held.append(line)
            stars += set(line.strip()) == {ord("*")}
            if stars == 2:
                say(held)
                held = []
            elif len(held) > 40:  # not the block we know: give it back as it was
                out.write(b"".join(held))
                held = []
            continue
        out.write(line)
    out.flush()
out.write(b"".join(held) + buf)
out.flush()
"""


def hide_xla_alarms() -> None:
    """For command-line tools: XLA's slow-compile alarm on stderr becomes one plain line (above).
    Python's own ``sys.stderr`` (errors, tracebacks, progress bars) keeps writing straight to the
    terminal or file it wrote to before; only what C++ code writes to file descriptor 2 passes
    through the filter."""
    if os.environ.get("U2QT_XLA_ALARMS", "") == "show":
        return
    sys.stderr.flush()
    original = os.dup(2)
    child = subprocess.Popen([sys.executable, "-c", _ALARM_FILTER], stdin=subprocess.PIPE, stdout=original,
                             close_fds=True)
    os.dup2(child.stdin.fileno(), 2)
    child.stdin.close()
    sys.stderr = open(original, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                      errors="backslashreplace", closefd=False)

    def restore() -> None:  # at exit: the filter sees EOF, writes what it holds, and ends
        sys.stderr.flush()
        os.dup2(original, 2)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()

    atexit.register(restore)
