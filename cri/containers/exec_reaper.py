"""The exec reaper: a small helper process that runs ``runc exec --detach`` for ExecSync and reports the
exit status of each process started that way.

Run as a script of its own (standard library only, ``python -I -S``), one per daemon, started on the
first ExecSync. It makes itself a child subreaper: ``runc exec --detach`` returns as soon as the process
runs in the container, and the process, orphaned, becomes this helper's child, so its exit status can
be collected. The daemon does not do this itself: as a subreaper it would also inherit every conmon
(which double-forks to leave it) and every orphan of its other helpers.

Protocol on the SOCK_SEQPACKET socket whose fd is the first argument (the helper exits when the daemon
closes it, so it never outlives the daemon):
one packet per request, ``{"argv": [...], "pid_file": "..."}`` as JSON with three descriptors: the
process's stdout and stderr, and the write end of a pipe for the answer. The answer is one JSON line,
then the pipe is closed: ``{"status": N}`` (the process's exit status; 128+N for a signal, as runc and
a shell report it) or ``{"runc": N}`` (runc failed with code N; its message is on the stderr given).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass

PR_SET_CHILD_SUBREAPER = 36
MAX_PACKET = 64 * 1024


@dataclass
class Request:
    pid_file: str
    answer_fd: int
    submitted: float = 0.0


UNCLAIMED_FOR = 60.0  # how long the status of a child no request has named yet is kept


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option})")


def _status(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _answer(req: Request, message: dict[str, int]) -> None:
    with contextlib.suppress(OSError):  # the daemon gave up on this one (timeout) or is gone
        os.write(req.answer_fd, json.dumps(message).encode() + b"\n")
    os.close(req.answer_fd)


def _read_pid(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


class SealedBinaries:
    """Sealed in-memory copies of the runtime binaries, run instead of the files.

    runc protects itself from being overwritten by a container (CVE-2019-5736) each time it re-executes
    itself to enter a container: unless its binary is already a sealed memfd, it bind-mounts itself
    read-only on a temporary file and unmounts it again, in the host's mount namespace: three mount
    table changes per exec (seen by everything that watches mountinfo) and about 1 ms of CPU here. A
    copy made once and sealed against writes is what runc accepts as already protected (about 9 MB of
    memory for runc 1.1). A binary replaced on disk (an upgrade) is copied again; if anything fails,
    the file itself is run.
    """

    SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

    def __init__(self) -> None:
        self.copies: dict[str, tuple[tuple[int, int, int, int], int]] = {}  # path -> (identity, memfd)

    def path(self, binary: str) -> str:
        try:
            st = os.stat(binary)
        except OSError:
            return binary
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        known = self.copies.get(binary)
        if known is not None and known[0] == identity:
            return f"/proc/self/fd/{known[1]}"
        if known is not None:
            os.close(known[1])
            del self.copies[binary]
        try:
            fd = self._copy(binary, st.st_size)
        except OSError as exc:
            print(f"exec reaper: running {binary} from disk: {exc}", file=sys.stderr, flush=True)
            return binary
        self.copies[binary] = (identity, fd)
        return f"/proc/self/fd/{fd}"

    def _copy(self, binary: str, size: int) -> int:
        fd = os.memfd_create(os.path.basename(binary), os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            with open(binary, "rb") as src:
                copied = 0
                while copied < size:
                    n = os.sendfile(fd, src.fileno(), copied, size - copied)
                    if n == 0:
                        raise OSError(f"{binary} shrank while copied")
                    copied += n
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, self.SEALS)
        except BaseException:
            os.close(fd)
            raise
        return fd


class Reaper:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.runcs: dict[int, Request] = {}  # runc pid -> its request
        self.targets: dict[int, Request] = {}  # exec'd process pid -> its request
        self.unclaimed: dict[int, tuple[int, float]] = {}  # pid -> (exit status, when reaped)
        self.binaries = SealedBinaries()

    def receive(self) -> bool:
        """Take one request; False when the daemon has closed the socket."""
        fds = array.array("i")
        try:
            data, ancdata, _, _ = self.control.recvmsg(
                MAX_PACKET, socket.CMSG_SPACE(3 * fds.itemsize), socket.MSG_CMSG_CLOEXEC
            )
        except InterruptedError:
            return True
        if not data:
            return False
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return True
        stdout, stderr, answer = fds
        req = Request(pid_file="", answer_fd=answer, submitted=time.monotonic())
        try:
            message = json.loads(data)
            req.pid_file = str(message["pid_file"])
            argv = [str(a) for a in message["argv"]]
            pid = os.posix_spawn(
                self.binaries.path(argv[0]),
                argv,
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, stdout, 1),
                    (os.POSIX_SPAWN_DUP2, stderr, 2),
                ],
                setsid=True,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            with contextlib.suppress(OSError):
                os.write(stderr, f"exec reaper: cannot run runc: {exc}\n".encode())
            _answer(req, {"runc": -1})
        else:
            self.runcs[pid] = req
        finally:
            os.close(stdout)
            os.close(stderr)
        return True

    def reap(self) -> None:
        """Collect every child that exited and match it with its request.

        A process becomes this helper's child when the runc thread that started it exits, which can be
        before runc as a whole is reaped: a status nobody has claimed yet is kept until runc's exit
        names its process (or for ``UNCLAIMED_FOR``: orphans of exec'd processes that share the host's
        PID namespace come here too)."""
        now = time.monotonic()
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            req = self.targets.pop(pid, None)
            if req is not None:
                _answer(req, {"status": _status(wait_status)})
            elif pid in self.runcs:
                self._runc_exited(self.runcs.pop(pid), _status(wait_status))
            else:
                self.unclaimed[pid] = (wait_status, now)
        for pid, (_, when) in list(self.unclaimed.items()):
            if now - when > UNCLAIMED_FOR:
                del self.unclaimed[pid]

    def _runc_exited(self, req: Request, code: int) -> None:
        target = _read_pid(req.pid_file) if code == 0 else 0
        if target <= 0:
            _answer(req, {"runc": code})
            return
        seen = self.unclaimed.pop(target, None)
        if seen is not None and seen[1] >= req.submitted:
            _answer(req, {"status": _status(seen[0])})
        else:
            self.targets[target] = req


def main() -> int:
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    control = socket.socket(fileno=int(sys.argv[1]))
    control.set_inheritable(False)  # not runc's to keep
    reaper = Reaper(control)
    with selectors.DefaultSelector() as sel:
        sel.register(control, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                if key.fileobj is control:
                    if not reaper.receive():
                        return 0
                else:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_r, 4096):
                            pass
            reaper.reap()


if __name__ == "__main__":
    sys.exit(main())
