"""What a command-line tool shows while it works: progress lines and XLA's alarm filter."""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# XLA's block as its C++ logger writes it to file descriptor 2 (xla/service/slow_operation_alarm.cc).
ALARM = (b"E1201 03:15:16.123456   4242 slow_operation_alarm.cc:140] \n"
         b"********************************\n"
         b"[Compiling module jit_step] Very slow compile?  If you want to file a bug, run with envvar "
         b"XLA_FLAGS=--xla_dump_to=/tmp/foo and attach the results.\n"
         b"********************************\n")
SCRIPT = f"""
import os, sys
sys.path.insert(0, {REPO!r})
from u2qt.progress import hide_xla_alarms
hide_xla_alarms()
os.write(2, b"E1201 real error from C++\\n")
os.write(2, {ALARM!r})
os.write(2, b"after the alarm\\n")
print("python's own stderr", file=sys.stderr)
os.write(2, b"no newline at the end")
"""


def _stderr(env_extra: dict) -> str:
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, env=env, timeout=60).stderr.decode()


def test_xla_slow_compile_alarm_becomes_one_plain_line_and_nothing_else_is_lost():
    err = _stderr({"U2QT_XLA_ALARMS": ""})
    assert "If you want to file a bug" not in err and "****" not in err and "slow_operation_alarm" not in err, err
    assert "u2qt: XLA has been compiling jit_step for over 2 minutes" in err, err
    for kept in ("E1201 real error from C++", "after the alarm", "python's own stderr", "no newline at the end"):
        assert kept in err, (kept, err)


def test_the_alarm_filter_can_be_turned_off():
    err = _stderr({"U2QT_XLA_ALARMS": "show"})
    assert "Very slow compile?" in err and "u2qt: XLA has been" not in err, err


def test_a_killed_process_loses_nothing_it_wrote_to_stderr():
    script = SCRIPT.replace('os.write(2, b"no newline at the end")', 'os.write(2, b"last words\\n"); os._exit(3)')
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 3 and b"last words" in proc.stderr, proc.stderr
