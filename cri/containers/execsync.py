"""ExecSync: ``runc exec --detach`` with the process's stdout and stderr on our pipes (no conmon, no log
file), its exit status from the exec reaper (cri/containers/exec_reaper.py).

Detached, runc hands our pipes to the process itself and exits once the process runs: nothing copies
the output and runc does not wait for it (a foreground ``runc exec`` took about 3 ms more CPU here,
and runc 1.1 waits until every holder of its output pipes is gone, a background child included). The process
is then orphaned to the reaper, a child subreaper, which reports its exit status on a pipe of the
request's own. Both output pipes are read as data arrives, so a process writing to both never blocks
on a full pipe; together they are capped at ``MAX_EXEC_OUTPUT`` (the rest is read and dropped so the
process can finish). Once the status is in, what the process wrote is already in the pipes: that is
read and the reply goes out, even if a background child keeps a pipe open.

runc's own failure (the container is not running, the program does not exist) is told by the reaper;
the process never ran, so the stderr pipe holds only runc's message. ``--pid-file`` tells where the
process runs: at the timeout, or when the gRPC call is cancelled, it and its process group are killed
(runc makes every exec'd process a session leader, so its group holds what it started without setsid).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from calyx_base.errors import DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument
from cri.containers import runc_errors

# kubelet and our server refuse messages over 16 MiB: keep ExecSync's output (both streams) below it.
MAX_EXEC_OUTPUT = 16 * 1024 * 1024 - 64 * 1024
READ_CHUNK = 256 * 1024
# After the process is killed at the timeout, how long the reaper may take to report it.
REAP_GRACE = 10.0
# What runc says when the container has no running init (it stopped after our state check).
NOT_RUNNING = ("cannot exec in a stopped", "not running", "container does not exist")
REAPER_SCRIPT = Path(__file__).with_name("exec_reaper.py")
DONE, TIMED_OUT, CANCELLED = "done", "timed out", "cancelled"


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class ReaperClient:
    """The daemon's end of the exec reaper: started on first use, started again if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def submit(self, argv: list[str], pid_file: Path, fds: tuple[int, int, int]) -> None:
        """Ask for ``argv`` (a ``runc exec --detach``) with ``fds`` = (stdout, stderr, answer pipe)."""
        payload = json.dumps({"argv": argv, "pid_file": str(pid_file)}).encode()
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        with self._lock:
            for _ in range(2):  # a reaper that died is replaced once
                sock = self._running()
                try:
                    sock.sendmsg([payload], rights)
                    return
                except OSError:
                    self._stop()
        raise Internal("the exec reaper does not take requests")

    def _running(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", str(REAPER_SCRIPT), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise Internal(f"cannot start the exec reaper: {exc.strerror}") from None
        finally:
            theirs.close()
        self._sock = ours
        return ours

    def _stop(self) -> None:
        if self._sock is not None:
            self._sock.close()  # the reaper exits when it sees the socket closed
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._stop()


REAPER = ReaperClient()


class Cancel:
    """Ends an ExecSync from another thread: the gRPC termination callback fires it when the client
    cancels or its deadline passes (kubelet gave up), so the process does not run on unobserved.
    Firing after ``close`` (the RPC ended normally) does nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fd, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def fire(self) -> None:
        with self._lock:
            if self._w >= 0:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._w, b"x")

    def close(self) -> None:
        with self._lock:
            if self._w >= 0:
                os.close(self._w)
                os.close(self.fd)
                self._w = self.fd = -1


def kill_exec_process(pid: int) -> None:
    """SIGKILL the exec'd process ``pid`` and its process group.

    Called while the reaper has not reported the process: until it reaps it, the PID (and so the group
    ID it leads) cannot name another process. A pidfd pins the leader; the group is signalled by ID,
    which the kernel keeps allocated while any member lives.
    """
    if pid <= 0:
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        os.close(fd)


class _Run:
    """What one exec produced so far: output within the cap, the reaper's answer."""

    def __init__(self, answer_fd: int, limit: int) -> None:
        self.answer_fd = answer_fd
        self.limit = limit
        self.kept = 0
        self.chunks: dict[int, list[bytes]] = {}
        self.answer = b""

    def add(self, fd: int, data: bytes) -> None:
        if fd == self.answer_fd:
            self.answer += data
            return
        room = self.limit - self.kept
        if room > 0:
            data = data[:room]
            self.chunks.setdefault(fd, []).append(data)
            self.kept += len(data)

    def got(self, fd: int) -> bytes:
        return b"".join(self.chunks.get(fd, ()))

    def outcome(self) -> dict[str, int]:
        try:
            value = json.loads(self.answer)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def run(
    runc: list[str],
    container_id: str,
    spec_path: Path,
    pid_file: Path,
    timeout_s: int,
    command: list[str],
    limit: int = MAX_EXEC_OUTPUT,
    cancel: Cancel | None = None,
) -> ExecResult:
    """Run the process ``spec_path`` describes in the container and wait for it; ``runc`` is the runc
    argv up to the subcommand (binary, --root, cgroup driver flag).

    ``timeout_s`` 0 waits for as long as the process runs; ``command`` names it in messages. Raises
    DeadlineExceeded at the timeout (the process is killed), FailedPrecondition when runc finds the
    container not running, Internal when runc cannot start the process. A fired ``cancel`` kills the
    process as the timeout does.
    """
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
    argv = [*runc, "exec", "--detach", "--process", str(spec_path), "--pid-file", str(pid_file), container_id]
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ans_r, ans_w = os.pipe2(os.O_CLOEXEC)
    state = _Run(ans_r, limit)
    try:
        try:
            REAPER.submit(argv, pid_file, (out_w, err_w, ans_w))
        finally:
            for fd in (out_w, err_w, ans_w):
                os.close(fd)
        ended = _pump(state, (out_r, err_r, ans_r), deadline, cancel.fd if cancel else -1)
        if ended != DONE:
            _kill_until_reported(state, pid_file)
            if ended == CANCELLED:
                raise DeadlineExceeded(f"command {command!r} cancelled by the client", container_id)
            raise DeadlineExceeded(f"command {command!r} timed out after {timeout_s}s", container_id)
        for fd in (out_r, err_r):
            _drain(fd, state)
    finally:
        for fd in (out_r, err_r, ans_r):
            os.close(fd)
    outcome = state.outcome()
    if not outcome:  # the reaper died with the process running: it must not run on unobserved
        kill_exec_process(_read_pid(pid_file))
    if "status" in outcome:
        return ExecResult(exit_code=int(outcome["status"]), stdout=state.got(out_r), stderr=state.got(err_r))
    message = state.got(err_r).decode(errors="replace").strip()
    message = message or f"runc exited with {outcome.get('runc', 'no answer from the exec reaper')}"
    if any(words in message for words in NOT_RUNNING):
        raise FailedPrecondition(f"container {container_id} is not running: {message}", container_id)
    if runc_errors.request_fault(message) is not None:  # the program is not in the container
        raise InvalidArgument(f"the command cannot be run in the container: {message}", container_id)
    raise Internal(f"exec in container failed: {message}", container_id)


def _kill_until_reported(state: _Run, pid_file: Path) -> None:
    """Kill the process until the reaper reports it (or REAP_GRACE passes): runc may still be starting
    it, with no pid file yet, when the timeout or a cancel comes, so one kill could miss it."""
    give_up = time.monotonic() + REAP_GRACE
    while time.monotonic() < give_up:
        kill_exec_process(_read_pid(pid_file))
        if _pump(state, (state.answer_fd,), min(give_up, time.monotonic() + 0.05)) == DONE:
            return


def _pump(state: _Run, fds: tuple[int, ...], deadline: float | None, cancel_fd: int = -1) -> str:
    """Read ``fds`` until the answer pipe is closed (DONE), the deadline passes (TIMED_OUT) or
    ``cancel_fd`` becomes readable (CANCELLED)."""
    with selectors.DefaultSelector() as sel:
        for fd in fds:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        if cancel_fd >= 0:
            sel.register(cancel_fd, selectors.EVENT_READ)
        while True:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return TIMED_OUT
            for key, _ in sel.select(wait):
                fd = int(key.fd)
                if fd == cancel_fd:
                    return CANCELLED
                try:
                    data = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                state.add(fd, data)
                if not data:
                    if fd == state.answer_fd:
                        return DONE
                    sel.unregister(fd)


def _drain(fd: int, state: _Run) -> None:
    """What is left in a pipe once the process has exited: at most one pipe's capacity, since that is
    all it can have written unread (a background child that holds the pipe and writes on must not keep
    us reading)."""
    budget = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    while budget > 0:
        try:
            data = os.read(fd, min(budget, READ_CHUNK))
        except BlockingIOError:
            return
        if not data:
            return
        state.add(fd, data)
        budget -= len(data)
