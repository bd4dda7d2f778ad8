"""ExecSync: ``runc exec`` in the foreground, its output read straight from pipes (no conmon, no log file).

runc starts the process in the container with pipes of its own as its stdout and stderr, copies them
to its stdio (our pipes), waits for the process and exits with its exit code (128+N for a signal).
Both pipes are read as data arrives, so a process writing to both never blocks on a full pipe; the
two together are capped at ``MAX_EXEC_OUTPUT`` (the rest is read and dropped so the process can end).

runc's own log goes to a third pipe (``--debug --log-format json``): it names runc's failures
(the container is not running, the program does not exist), and its "process exited" record gives
the exit status as soon as runc has reaped the process. That matters when the process leaves a
background child holding its stdout or stderr: runc then keeps copying until that child exits,
but the reply is due when the command has ended. So once the status is known and runc has not
finished within ``LINGER`` (ample time to copy what the command wrote), the reply goes out and runc
is killed; the child's later writes have no reader.

``--pid-file`` tells where the process runs. At the timeout, it and its process group are killed
(runc makes every exec'd process a session leader, so the group holds what it started without setsid);
runc then reaps it and exits. Killing runc instead would orphan the process in the container.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cri.errors import CommandFailed, DeadlineExceeded, FailedPrecondition, Internal
from cri.instruments import observe_runtime

# kubelet and our server refuse messages over 16 MiB: keep ExecSync's output (both streams) below it.
MAX_EXEC_OUTPUT = 16 * 1024 * 1024 - 64 * 1024
READ_CHUNK = 256 * 1024
# How long runc may go on after it reaped the process before we stop waiting for it (it copies what
# the process left in its pipes, a millisecond's work; longer only while a background child holds them).
LINGER = 1.0
# After the process is killed at the timeout, how long runc may take to reap it and exit.
REAP_GRACE = 10.0
# What runc says when the container has no running init (it stopped after our state check).
NOT_RUNNING = ("cannot exec in a stopped", "not running", "container does not exist")


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


def kill_exec_process(pid: int, runner_alive: bool) -> None:
    """SIGKILL the exec'd process ``pid`` and its process group.

    Trusted only while its parent (runc, ``runner_alive``) has not exited: until runc reaps it, the PID
    (and so the group ID it leads) cannot name another process. A pidfd pins the leader; the group is
    signalled by ID, which the kernel keeps allocated while any member lives.
    """
    if pid <= 0 or not runner_alive:
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
    """What one ``runc exec`` produced so far: output within the cap, runc's log records."""

    def __init__(self, pid_file: Path, log_fd: int, limit: int) -> None:
        self.pid_file = pid_file
        self.log_fd = log_fd
        self.limit = limit
        self.kept = 0
        self.chunks: dict[int, list[bytes]] = {}
        self.log_tail = b""
        self.errors: list[str] = []
        self.status: int | None = None  # the process's exit status, once runc logged it

    def add(self, fd: int, data: bytes) -> None:
        """``data`` read from ``fd``: runc's log or the process's output."""
        if fd == self.log_fd:
            self.log(data)
            return
        room = self.limit - self.kept
        if room > 0:
            data = data[:room]
            self.chunks.setdefault(fd, []).append(data)
            self.kept += len(data)

    def got(self, fd: int) -> bytes:
        return b"".join(self.chunks.get(fd, ()))

    def log(self, data: bytes) -> None:
        *lines, self.log_tail = (self.log_tail + data).split(b"\n")
        for line in lines:
            if b'"process exited"' in line or b'"level":"error"' in line:
                self._record(line)

    def _record(self, line: bytes) -> None:
        try:
            entry = json.loads(line)
        except ValueError:
            return
        if entry.get("level") == "error":
            self.errors.append(str(entry.get("msg", "")))
        elif entry.get("msg") == "process exited" and entry.get("pid") == _read_pid(self.pid_file):
            self.status = int(entry.get("status", -1))


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    """``pid`` (our child) has not exited yet; it is left unreaped."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def run(
    runc: list[str],
    container_id: str,
    spec_path: Path,
    pid_file: Path,
    timeout_s: int,
    command: list[str],
    limit: int = MAX_EXEC_OUTPUT,
) -> ExecResult:
    """Run the process ``spec_path`` describes in the container and wait for it; ``runc`` is the runc
    argv up to the subcommand (binary, --root, cgroup driver flag).

    ``timeout_s`` 0 waits for as long as the process runs; ``command`` names it in messages. Raises
    DeadlineExceeded at the timeout (the process is killed), FailedPrecondition when runc finds the
    container not running, Internal when runc cannot start the process.
    """
    started = time.monotonic()
    deadline = started + timeout_s if timeout_s > 0 else None
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    log_r, log_w = os.pipe2(os.O_CLOEXEC)
    argv = [
        *runc,
        "--debug",  # for the "process exited" record
        "--log",
        f"/proc/self/fd/{log_w}",
        "--log-format",
        "json",
        "exec",
        "--process",
        str(spec_path),
        "--pid-file",
        str(pid_file),
        container_id,
    ]
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            pass_fds=(log_w,),
            start_new_session=True,
        )
    except OSError as exc:
        for fd in (out_r, out_w, err_r, err_w, log_r, log_w):
            os.close(fd)
        raise CommandFailed(argv, -1, f"cannot run: {exc.strerror}", container_id) from None
    for fd in (out_w, err_w, log_w):
        os.close(fd)
    state = _Run(pid_file, log_r, limit)
    pidfd = os.pidfd_open(child.pid)
    timed_out = False
    try:
        timed_out = _pump(state, pidfd, (out_r, err_r, log_r), deadline)
        if timed_out:
            pid = _read_pid(pid_file)
            _stop(child, pid, REAP_GRACE if pid > 0 else 0)
        else:
            _stop(child, 0, 0 if state.status is not None else None)  # runc lingering for a child: go
        for fd in (out_r, err_r, log_r):
            _drain(fd, state)
    finally:
        if child.returncode is None:  # an exception on the way: leave nothing running
            _stop(child, _read_pid(pid_file), 0)
        for fd in (out_r, err_r, log_r, pidfd):
            os.close(fd)
    ran = state.status is not None or pid_file.exists()
    observe_runtime(runc[0], "exec", time.monotonic() - started, ran)
    if timed_out:
        raise DeadlineExceeded(f"command {command!r} timed out after {timeout_s}s", container_id)
    if not ran:
        message = "; ".join(state.errors) or state.got(err_r).decode(errors="replace").strip()
        message = message or f"runc exited with {child.returncode}"
        if any(words in message for words in NOT_RUNNING):
            raise FailedPrecondition(f"container {container_id} is not running: {message}", container_id)
        raise Internal(f"exec in container failed: {message}", container_id)
    code = state.status if state.status is not None else child.returncode
    if code < 0:  # runc itself was killed; what it says is all we know
        code = 128 - code
    return ExecResult(exit_code=code, stdout=state.got(out_r), stderr=state.got(err_r))


def _stop(child: subprocess.Popen[bytes], pid: int, grace: float | None) -> None:
    """Kill the exec'd process ``pid`` (0: none) and give runc ``grace`` seconds to exit (None: as long
    as it takes), then kill runc."""
    kill_exec_process(pid, _alive(child.pid))
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _pump(state: _Run, pidfd: int, pipes: tuple[int, ...], deadline: float | None) -> bool:
    """Read the pipes until runc exits or lingers past ``LINGER`` after the process's exit (False),
    or until the deadline passes with the process still running (True)."""
    with selectors.DefaultSelector() as sel:
        for fd in pipes:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        sel.register(pidfd, selectors.EVENT_READ)
        linger_until: float | None = None
        while True:
            now = time.monotonic()
            if state.status is not None and linger_until is None:
                linger_until = now + LINGER
            ends = [t for t in (deadline, linger_until) if t is not None]
            if ends and min(ends) <= now:
                return state.status is None  # a known exit status is a result, even at the deadline
            for key, _ in sel.select(min(ends) - now if ends else None):
                fd = int(key.fd)
                if fd == pidfd:
                    return False
                if not _read(fd, state):
                    sel.unregister(fd)


def _read(fd: int, state: _Run) -> bool:
    """One read of what is ready on ``fd``; False at end of file."""
    try:
        data = os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return True
    state.add(fd, data)
    return bool(data)


def _drain(fd: int, state: _Run) -> None:
    """What is left in a pipe whose writer has exited: at most one pipe's capacity, since that is all
    that can have been written unread (a background child that holds the pipe and writes on must not
    keep us reading)."""
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
