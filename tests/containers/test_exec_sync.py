"""ExecSync's runc exec (cri.containers.execsync) against real runc, below the CRI server: what runc
says about a container that is not running, the cap over both streams, and background children that
keep the output pipes open (the reply must not wait for them)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from calyx_base.errors import DeadlineExceeded, FailedPrecondition, Internal
from cri.containers import exec_reaper, execsync
from cri.containers.model import EXITED
from tests.container_fixtures import processes_with, wait_gone, wait_running
from tests.containers.harness import Harness


def _run(
    h: Harness,
    cid: str,
    cmd: list[str],
    timeout_s: int = 30,
    limit: int = execsync.MAX_EXEC_OUTPUT,
    cancel: execsync.Cancel | None = None,
) -> execsync.ExecResult:
    """execsync.run as the manager drives it, with a process spec of the container's own."""
    c = h.containers.exits.get(cid)
    spec = h.containers.execs.spec_file(c, h.containers.execs.exec_process(c, cmd, tty=False))
    pid_file = spec.with_suffix(".pid")
    try:
        runc = h.containers.monitors.get("runc")._runc()
        return execsync.run(runc, c.id, spec, pid_file, timeout_s, cmd, limit=limit, cancel=cancel)
    finally:
        spec.unlink()
        pid_file.unlink(missing_ok=True)


def test_runc_finding_the_container_stopped_is_failed_precondition(harness: Harness) -> None:
    pod = harness.pod()
    cid = harness.run(pod, "brief", ["true"])
    deadline = time.monotonic() + 60
    while harness.containers.exits.get(cid).state != EXITED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # the manager refuses before runc is asked; runc's own answer maps to the same status
    with pytest.raises(FailedPrecondition):
        _run(harness, cid, ["true"])


def test_cap_counts_both_streams(harness: Harness) -> None:
    pod = harness.pod()
    cid = harness.run(pod, "capped", ["sleep", "1000"])
    result = _run(harness, cid, ["sh", "-c", "echo 12345; echo abcdef >&2; echo 6789"], limit=10)
    assert result.exit_code == 0
    assert len(result.stdout) + len(result.stderr) == 10
    assert (result.stdout + result.stderr).startswith(b"12345\n") or result.stderr.startswith(b"abcdef")


def test_a_background_writer_does_not_hold_the_reply_and_dies_with_its_pipe(harness: Harness) -> None:
    pod = harness.pod()
    cid = harness.run(pod, "bg", ["sleep", "1000"])
    marker = "bgwriter-" + cid[:8]
    go = f"/tmp/go-{marker}"
    writer = f"until [ -e {go} ]; do sleep 0.05; done; while :; do echo more; sleep 0.05; done"
    script = f"sh -c '{writer}' {marker} & echo started; exit 4"
    result = _run(harness, cid, ["sh", "-c", script])
    assert result.exit_code == 4
    assert result.stdout.startswith(b"started\n")
    assert processes_with(marker)  # still there: it writes only once told to
    assert _run(harness, cid, ["touch", go]).exit_code == 0
    # nobody reads its stdout any more: its first write ends it (SIGPIPE)
    assert wait_gone(marker) == []


def test_runc_runs_from_a_sealed_copy(harness: Harness) -> None:
    """The reaper runs runc from a sealed memfd, which runc accepts as already protected (it then makes
    no bind mount of itself in the host's mount namespace for every exec)."""
    pod = harness.pod()
    cid = harness.run(pod, "sealed", ["sleep", "1000"])
    assert _run(harness, cid, ["true"]).exit_code == 0
    proc = execsync.REAPER._proc
    assert proc is not None
    runc = Path(harness.containers.monitors.get("runc").runtime_path)
    copies = []
    for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
        if os.readlink(fd).startswith("/memfd:"):
            handle = os.open(fd, os.O_RDONLY)
            try:
                seals = fcntl.fcntl(handle, fcntl.F_GET_SEALS)
                copies.append((seals, os.fstat(handle).st_size))
            finally:
                os.close(handle)
    assert copies == [(exec_reaper.SealedBinaries.SEALS, runc.stat().st_size)]


def test_a_reaper_that_dies_mid_exec_takes_the_process_with_it(harness: Harness) -> None:
    pod = harness.pod()
    cid = harness.run(pod, "orphaned", ["sleep", "1000"])
    marker = str(900000 + int(cid[:4], 16))
    failures: list[Exception] = []

    def call() -> None:
        try:
            _run(harness, cid, ["sh", "-c", f"sleep {marker}; true"], timeout_s=0)
        except Exception as exc:
            failures.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_running(marker)  # the exec'd process runs
    reaper = execsync.REAPER._proc
    assert reaper is not None
    reaper.kill()
    caller.join(60)
    assert [type(e) for e in failures] == [Internal]
    assert wait_gone(marker) == []
    assert _run(harness, cid, ["echo", "again"]).stdout == b"again\n"  # a new reaper


def test_concurrent_execs_each_get_their_own_result(harness: Harness) -> None:
    pod = harness.pod()
    cid = harness.run(pod, "busy", ["sleep", "1000"])
    results: dict[int, execsync.ExecResult] = {}

    def one(n: int) -> None:
        script = f"sleep 0.{n % 3}; echo out{n}; echo err{n} >&2; exit {n}"
        results[n] = _run(harness, cid, ["sh", "-c", script])

    threads = [threading.Thread(target=one, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert {n: (r.exit_code, r.stdout, r.stderr) for n, r in results.items()} == {
        n: (n, f"out{n}\n".encode(), f"err{n}\n".encode()) for n in range(16)
    }


def test_a_cancel_before_runc_has_started_the_process_still_kills_it(harness: Harness) -> None:
    """Cancelled before runc wrote the pid file: the kill is retried until the process is gone."""
    pod = harness.pod()
    cid = harness.run(pod, "early", ["sleep", "1000"])
    marker = f"{os.getpid() % 1000}{time.monotonic_ns() % 100000}.5"
    cancel = execsync.Cancel()
    cancel.fire()  # already fired when the call starts: runc has not even run
    try:
        with pytest.raises(DeadlineExceeded):
            _run(harness, cid, ["sh", "-c", f"sleep {marker}; true"], timeout_s=0, cancel=cancel)
    finally:
        cancel.close()
    assert wait_gone(marker) == []
