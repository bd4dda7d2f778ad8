"""A conmon that never answers CreateContainer is killed with everything it started.

conmon double-forks and makes itself a session leader, so killing the child Calyx started (long gone by
then) left the real conmon and its ``runc create`` running: the CRI fuzz found five such pairs after a
run (a deadlock between them on runc's 120 KB error message). A stand-in conmon that behaves the same
way (writes its -P pid file from a new session, starts a child, never writes the sync pipe) shows that
both are gone once the create times out.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from calyx_base.errors import DeadlineExceeded
from cri.containers import monitor as monitor_module
from cri.containers.monitor import Monitor

STAND_IN = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in -P) pidfile=$2 ;; -c) cid=$2 ;; esac
  shift
done
setsid sh -c 'echo $$ > "$1"; sleep 1000 & echo $! > "$1.child"; wait' stand-in-conmon "$pidfile" "$cid" &
"""
STAND_IN_NAME = "stand-in-conmon"
# One whose pid file comes a moment after its child started, as real conmon's launcher writes it after
# the fork: a create that times out in between must still find it.
LATE_PID_FILE = STAND_IN.replace(
    """'echo $$ > "$1"; sleep 1000 & echo $! > "$1.child"; wait'""",
    """'sleep 1000 & echo $! > "$1.child"; sleep 1; echo $$ > "$1"; wait'""",
)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].startswith(("Z", "X"))


class _ClockPastDeadlineOnce:
    """The monitor's ``time``: the real one, but ``monotonic`` jumps far ahead once ``happened`` holds, so
    a create's deadline passes at that event however slow the host is, not at a wall-clock moment."""

    def __init__(self, happened: Callable[[], bool]) -> None:
        self.happened = happened

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def monotonic(self) -> float:
        return time.monotonic() + (10**6 if self.happened() else 0)


def _written(path: Path) -> bool:
    try:
        return path.read_text().endswith("\n")
    except OSError:
        return False


@pytest.mark.parametrize("stand_in", [STAND_IN, LATE_PID_FILE], ids=["pid-file-first", "pid-file-late"])
def test_a_conmon_that_does_not_answer_is_killed_with_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in: str
) -> None:
    conmon = tmp_path / "conmon"
    conmon.write_text(stand_in)
    conmon.chmod(0o755)
    monitor = Monitor(str(conmon), "runc", tmp_path / "runc", tmp_path / "exits", tmp_path / "sockets")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    cid = secrets.token_hex(32)
    files = [bundle / name for name in ("conmon.pid", "conmon.pid.child")]
    # The create times out once the stand-in has started its child, as a hung conmon has: with a 1 s
    # deadline a slow host timed it out before, and nothing said which processes to kill.
    monkeypatch.setattr(monitor_module, "time", _ClockPastDeadlineOnce(lambda: _written(files[1])))
    try:
        with pytest.raises(DeadlineExceeded):
            monitor.create(cid, bundle, bundle, str(tmp_path / "c.log"), False, False, False, timeout=600)
        deadline = time.monotonic() + 60
        while not all(map(_written, files)) and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [int(path.read_text()) for path in files]
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(pid) for pid in pids), pids
    finally:  # what a failed run left: the stand-in's processes, by their pid files and command lines
        for path, cmdline in zip(files, (STAND_IN_NAME.encode(), b"sleep\x001000\x00"), strict=True):
            with contextlib.suppress(OSError, ValueError):
                pid = int(path.read_text())
                if cmdline in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
