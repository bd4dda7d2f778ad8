"""A conmon that never answers CreateContainer is killed with everything it started.

conmon double-forks and makes itself a session leader, so killing the child Calyx started (long gone by
then) left the real conmon and its ``runc create`` running: the CRI fuzz found five such pairs after a
run (a deadlock between them on runc's 120 KB error message). A stand-in conmon that behaves the same
way (writes its -P pid file from a new session, starts a child, never writes the sync pipe) shows that
both are gone once the create times out.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from calyx_base.errors import DeadlineExceeded
from cri.containers.monitor import Monitor

STAND_IN = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in -P) pidfile=$2 ;; -c) cid=$2 ;; esac
  shift
done
setsid sh -c 'echo $$ > "$1"; sleep 1000 & echo $! > "$1.child"; wait' stand-in-conmon "$pidfile" "$cid" &
"""


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].startswith(("Z", "X"))


def test_a_conmon_that_does_not_answer_is_killed_with_its_children(tmp_path: Path) -> None:
    conmon = tmp_path / "conmon"
    conmon.write_text(STAND_IN)
    conmon.chmod(0o755)
    monitor = Monitor(str(conmon), "runc", tmp_path / "runc", tmp_path / "exits", tmp_path / "sockets")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    cid = secrets.token_hex(32)
    with pytest.raises(DeadlineExceeded):
        monitor.create(cid, bundle, bundle, str(tmp_path / "c.log"), False, False, False, timeout=1.0)
    pids = [int((bundle / name).read_text()) for name in ("conmon.pid", "conmon.pid.child")]
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids), pids
