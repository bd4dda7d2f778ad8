"""Run one exec process for a streaming session and move its bytes, without buffering them (asyncio).

The process (``runc exec ...`` for a container) is spawned with either a pseudo-terminal (tty) or
pipes, in its own session. Its exit is watched through a pidfd, so no thread waits on it and no other
child of the daemon is reaped by mistake. Reads happen only when the consumer asked for more, so a
slow client slows the process down (the pipe fills) instead of growing the daemon's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import pty
import signal
import struct
import subprocess
import termios
import time
import tty as tty_mod
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("cri.streaming.process")

READ_CHUNK = 256 * 1024


def set_nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


async def _wait_fd(fd: int, writable: bool) -> None:
    """Wait (on the event loop, no thread) until ``fd`` is readable, or writable."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    if writable:
        loop.add_writer(fd, ready.set_result, None)
    else:
        loop.add_reader(fd, ready.set_result, None)
    try:
        await ready
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def read_fd(fd: int, size: int = READ_CHUNK) -> bytes:
    """Read what is available on a non-blocking fd, waiting for readability; b"" at EOF.

    A pty master answers EIO once the last slave is closed: that is its end of file.
    """
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise
        await _wait_fd(fd, writable=False)


async def write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking fd, waiting for space; BrokenPipeError if closed."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
            continue
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno == errno.EIO:
                raise BrokenPipeError(errno.EPIPE, "terminal closed") from None
            raise
        await _wait_fd(fd, writable=True)


def set_winsize(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


class ExecProcess:
    """A spawned process with its stdio ends held by the daemon.

    ``pid_file`` is where ``runc exec --pid-file`` writes the host PID of the process inside the
    container: killing runc alone would orphan that process, so ``kill`` signals it directly.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        pid_file: Path | None = None,
        env: dict[str, str] | None = None,
        size: tuple[int, int] | None = None,
        cleanup: Sequence[Path] = (),
        raw: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.cleanup = list(cleanup)  # files to remove when the session ends (runc's process spec)
        self.tty = tty
        self.pid_file = pid_file
        self.stdin_fd: int | None = None
        self.stdout_fd: int | None = None
        self.stderr_fd: int | None = None
        self.master_fd: int | None = None
        to_close: list[int] = []
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        to_close.append(devnull)
        try:
            if tty:
                master, slave = pty.openpty()
                os.set_inheritable(master, False)
                if raw:
                    # For a relay (runc): the terminal that matters is the container's. runc makes
                    # ours raw too, but only once it runs; input arriving before would echo twice.
                    tty_mod.setraw(slave)
                to_close.append(slave)
                if size:
                    set_winsize(master, *size)
                self.master_fd = master
                child_in = child_out = child_err = slave
                if stdin:
                    self.stdin_fd = master
                if stdout:
                    self.stdout_fd = master
            else:
                child_in = child_out = child_err = devnull
                if stdin:
                    r, w = os.pipe2(os.O_CLOEXEC)
                    child_in, self.stdin_fd = r, w
                    to_close.append(r)
                if stdout:
                    r, w = os.pipe2(os.O_CLOEXEC)
                    self.stdout_fd, child_out = r, w
                    to_close.append(w)
                if stderr:
                    r, w = os.pipe2(os.O_CLOEXEC)
                    self.stderr_fd, child_err = r, w
                    to_close.append(w)
            self.popen = subprocess.Popen(
                self.argv,
                stdin=child_in,
                stdout=child_out,
                stderr=child_err,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        except BaseException:
            for fd in {self.stdin_fd, self.stdout_fd, self.stderr_fd, self.master_fd} - {None}:
                os.close(fd)  # type: ignore[arg-type]
            raise
        finally:
            for fd in to_close:
                os.close(fd)
        for fd in {self.stdin_fd, self.stdout_fd, self.stderr_fd, self.master_fd} - {None}:
            set_nonblocking(fd)  # type: ignore[arg-type]
        self.pid = self.popen.pid
        self.pidfd = os.pidfd_open(self.pid)
        self.returncode: int | None = None

    async def wait(self) -> int:
        """The exit code (128+N for a signal, as a shell reports it)."""
        if self.returncode is not None:
            return self.returncode
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def exited() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self.pidfd, exited)
        try:
            await ready
        finally:
            loop.remove_reader(self.pidfd)
        return self._reap()

    def _reap(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        self.returncode = 128 - code if code < 0 else code
        self.popen.returncode = self.returncode  # keep subprocess from waiting on it again
        return self.returncode

    def resize(self, width: int, height: int) -> None:
        """New terminal size: set it on our pty and tell the process (runc relays it inward)."""
        if self.master_fd is None or self.returncode is not None:
            return
        with contextlib.suppress(OSError):
            set_winsize(self.master_fd, width, height)
            signal.pidfd_send_signal(self.pidfd, signal.SIGWINCH)

    def close_stdin(self) -> None:
        """End of the client's input: close the pipe, or send EOT on a terminal."""
        if self.stdin_fd is None:
            return
        if self.tty:
            with contextlib.suppress(OSError):
                os.write(self.stdin_fd, b"\x04")
            self.stdin_fd = None
            return
        os.close(self.stdin_fd)
        self.stdin_fd = None

    async def terminate(self, pid_file_wait: float = 2.0) -> None:
        """Kill, first giving runc a moment to write the pid file if the session ends very early
        (killing runc before it does would leave the container process running)."""
        if self.pid_file is not None:
            deadline = asyncio.get_running_loop().time() + pid_file_wait
            while self._container_pid() is None and self._alive():
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.02)
        self.kill()

    def discard(self, pid_file_wait: float = 2.0) -> None:
        """``terminate``, reap and ``close`` without an event loop, blocking until runc has exited: for a
        process whose session ended before it got it (on a worker thread, never on the loop)."""
        deadline = time.monotonic() + pid_file_wait
        while self.pid_file is not None and self._container_pid() is None and self._alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.kill()
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                self._reap()
        self.close()

    def kill(self) -> None:
        """Kill the process in the container (through the pid file) and our direct child."""
        if self.returncode is not None:
            return
        target = self._container_pid()
        if target is not None:
            try:
                fd = os.pidfd_open(target)
            except OSError:
                fd = -1
            # The process is our child's (runc's) child: while runc lives, that PID cannot be reused.
            if fd >= 0:
                try:
                    if self._alive():
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
                finally:
                    os.close(fd)
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def _alive(self) -> bool:
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return info is None

    def _container_pid(self) -> int | None:
        if self.pid_file is None:
            return None
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        fds = {self.stdin_fd, self.stdout_fd, self.stderr_fd, self.master_fd} - {None}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # type: ignore[arg-type]
        self.stdin_fd = self.stdout_fd = self.stderr_fd = self.master_fd = None
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        for path in [self.pid_file, *self.cleanup]:
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()
