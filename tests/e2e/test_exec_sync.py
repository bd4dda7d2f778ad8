"""ExecSync through the CRI API against real runc: streams, exit codes, the output cap, failures to
start, timeouts (nothing left running), and pods with a shared PID namespace."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from pathlib import Path

import grpc

from cri.api import api_pb2 as pb
from cri.api import api_pb2_grpc as pb_grpc
from cri.containers.execsync import MAX_EXEC_OUTPUT
from tests import container_fixtures
from tests.container_fixtures import Cx, processes_with, wait_gone, wait_running

cx = container_fixtures.cx


def _exec_dir_empty(cx: Cx, cid: str) -> bool:
    exec_dir = cx.daemon.root / "containers" / cid / "exec"
    assert (cx.daemon.root / "containers" / cid).is_dir()
    return not exec_dir.exists() or not any(exec_dir.iterdir())


def _marker() -> str:
    return str(7000 + secrets.randbelow(2000)) + "." + str(secrets.randbelow(10**6))


def test_streams_apart_and_exit_codes(cx: Cx) -> None:
    pod = cx.pod()
    cid = cx.run(pod, "codes", ["sleep", "1000"])
    result = cx.exec(cid, "sh", "-c", "echo one; echo two >&2; echo three; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"one\nthree\n", b"two\n")
    assert cx.exec(cid, "true").exit_code == 0
    assert cx.exec(cid, "false").exit_code == 1
    # a process killed by a signal: 128 + the signal, as a shell reports it
    assert cx.exec(cid, "sh", "-c", "kill -9 $$").exit_code == 137
    # output without a trailing newline comes back as it was written
    assert cx.exec(cid, "printf", "no newline").stdout == b"no newline"
    assert _exec_dir_empty(cx, cid)


def test_output_cap_applies_to_both_streams_together(cx: Cx) -> None:
    pod = cx.pod()
    cid = cx.run(pod, "chatty", ["sleep", "1000"])
    both = (
        "head -c 12000000 /dev/zero | tr '\\0' o & "
        "head -c 12000000 /dev/zero | tr '\\0' e >&2; wait; echo done-after-cap >&2"
    )
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    with grpc.insecure_channel(f"unix:{cx.daemon.socket}", options=options) as channel:
        reply = pb_grpc.RuntimeServiceStub(channel).ExecSync(
            pb.ExecSyncRequest(cmd=["sh", "-c", both], container_id=cid, timeout=120), timeout=180
        )
    # the process was not blocked by the cap: it wrote everything and exited on its own
    assert reply.exit_code == 0
    assert len(reply.stdout) + len(reply.stderr) == MAX_EXEC_OUTPUT
    assert set(reply.stdout) == {ord("o")} and set(reply.stderr) == {ord("e")}
    assert b"done-after-cap" not in reply.stderr


def test_command_that_cannot_start_is_a_clear_status(cx: Cx) -> None:
    pod = cx.pod()
    cid = cx.run(pod, "missing", ["sleep", "1000"])
    try:
        cx.exec(cid, "/no/such/program", "arg")
    except grpc.RpcError as err:
        status = (err.code(), err.details())
    else:
        raise AssertionError("ExecSync of a missing program succeeded")
    assert status[0] == grpc.StatusCode.INVALID_ARGUMENT  # the request's program, not an internal error
    assert "/no/such/program" in status[1] and "no such file" in status[1].lower(), status
    # the container is unharmed and later execs work
    assert cx.output(cid, "echo", "still") == "still\n"
    assert _exec_dir_empty(cx, cid)


def test_timeout_kills_the_process_and_its_children(cx: Cx) -> None:
    pod = cx.pod()
    cid = cx.run(pod, "slow", ["sleep", "1000"])
    child, own = _marker(), _marker()
    code = cx.code(cx.exec, cid, "sh", "-c", f"sleep {child} & sleep {own}; echo never", timeout=1)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_gone(own) == [] and wait_gone(child) == []
    assert _exec_dir_empty(cx, cid)
    # the container itself runs on
    assert cx.status(cid).status.state == pb.CONTAINER_RUNNING
    assert cx.output(cid, "echo", "alive") == "alive\n"


def test_background_process_holding_the_output_does_not_hold_the_reply(cx: Cx) -> None:
    pod = cx.pod()
    cid = cx.run(pod, "bg", ["sleep", "1000"])
    marker = _marker()
    # the reply comes when the command exits, although its child still has stdout open
    reply = cx.exec(cid, "sh", "-c", f"sleep {marker} & echo started", timeout=60)
    assert (reply.exit_code, reply.stdout) == (0, b"started\n")
    pids = processes_with(marker)
    assert len(pids) == 1
    os.kill(pids[0], 9)
    assert wait_gone(marker) == []


def test_no_timeout_means_wait(cx: Cx) -> None:
    pod = cx.pod()
    cid = cx.run(pod, "patient", ["sleep", "1000"])
    reply = cx.exec(cid, "sh", "-c", "sleep 1.5; echo waited", timeout=0)
    assert (reply.exit_code, reply.stdout) == (0, b"waited\n")


def test_exec_in_a_pod_with_a_shared_pid_namespace(cx: Cx) -> None:
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
    )
    pod = cx.pod(linux=linux, host_network=False)
    shared = pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
    )
    cid = cx.run(pod, "shared", ["sleep", "1000"], linux=shared)
    # PID 1 is the pod's init, not the container's sleep; the exec'd shell is another process
    assert cx.output(cid, "sh", "-c", "cat /proc/1/comm; echo $$").split()[0] != "sleep"
    marker = _marker()
    code = cx.code(cx.exec, cid, "sh", "-c", f"sleep {marker}; true", timeout=1)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_gone(marker) == []


def test_exec_in_a_stopped_or_unknown_container(cx: Cx) -> None:
    pod = cx.pod()
    done = cx.run(pod, "done", ["true"])
    cx.wait_exit(done)
    assert cx.code(cx.exec, done, "true") == grpc.StatusCode.FAILED_PRECONDITION
    assert cx.code(cx.exec, "f" * 64, "true") == grpc.StatusCode.NOT_FOUND
    running = cx.run(pod, "running", ["sleep", "1000"])
    assert cx.code(cx.exec, running, timeout=5) == grpc.StatusCode.INVALID_ARGUMENT


def _reapers_of(daemon_pid: int) -> list[int]:
    """The daemon's exec reaper processes (children of the daemon running exec_reaper.py)."""
    found = []
    for pid in processes_with(""):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"exec_reaper.py" in cmdline and int(stat.rsplit(")", 1)[1].split()[1]) == daemon_pid:
            found.append(pid)
    return found


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_exec_reaper_is_replaced_and_leaves_with_the_daemon(cx: Cx) -> None:
    pod = cx.pod()
    cid = cx.run(pod, "reaped", ["sleep", "1000"])
    assert cx.exec(cid, "true").exit_code == 0
    assert cx.daemon.proc is not None
    [reaper] = _reapers_of(cx.daemon.proc.pid)
    os.kill(reaper, signal.SIGKILL)
    # Once it has died (its socket closed: a zombie until the daemon reaps it), the next call gets a
    # new one. (A reaper dying under a call fails that call: tests/containers/test_exec_sync.py.)
    deadline = time.monotonic() + 60
    while not _dead(reaper):
        assert time.monotonic() < deadline, "SIGKILL did not end the exec reaper"
        time.sleep(0.02)
    assert cx.output(cid, "echo", "again") == "again\n"  # a new reaper took over
    [second] = _reapers_of(cx.daemon.proc.pid)
    assert second != reaper

    # an exec in flight when the daemon dies: the reaper goes with the daemon, and the process is
    # killed when the daemon starts again (its pid file is left in the container's exec dir)
    marker = _marker()
    errors: list[grpc.StatusCode] = []

    def call() -> None:
        try:
            cx.exec(cid, "sh", "-c", f"sleep {marker}; true", timeout=0)
        except grpc.RpcError as err:
            errors.append(err.code())

    caller = threading.Thread(target=call)
    caller.start()
    wait_running(marker)  # the exec'd process runs
    # SIGKILL before the client lets go (Daemon.kill9 closes the channel first, a cancel the daemon
    # would act on)
    cx.daemon.proc.kill()
    cx.daemon.proc.wait(60)
    cx.daemon.kill9()
    caller.join(60)
    assert len(errors) == 1  # the call ended with the daemon (cancelled or unavailable)
    gone_by = time.monotonic() + 60
    while Path(f"/proc/{second}/cmdline").exists() and Path(f"/proc/{second}/cmdline").read_bytes():
        assert time.monotonic() < gone_by, "the exec reaper outlived the daemon"
        time.sleep(0.05)
    assert processes_with(marker)  # nothing killed it yet
    cx.daemon.start()
    assert wait_gone(marker) == []
    assert _exec_dir_empty(cx, cid)


def test_a_client_that_gives_up_has_the_process_killed(cx: Cx) -> None:
    pod = cx.pod()
    cid = cx.run(pod, "abandoned", ["sleep", "1000"])
    marker = _marker()
    request = pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", f"sleep {marker}; true"], timeout=0)
    # no ExecSync timeout; the client's own gRPC deadline passes first
    code = cx.code(cx.rt.ExecSync, request, timeout=2)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_gone(marker) == []
    assert _exec_dir_empty_soon(cx, cid)
    assert cx.output(cid, "echo", "still") == "still\n"


def _exec_dir_empty_soon(cx: Cx, cid: str, timeout: float = 60.0) -> bool:
    """The server ends the call after the client has gone: its files go a moment later."""
    deadline = time.monotonic() + timeout
    while not _exec_dir_empty(cx, cid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
