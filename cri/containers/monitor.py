"""runc under conmon: create, start, signal, delete and log reopen of one container (ExecSync runs
``runc exec`` without conmon: cri.containers.execsync).

conmon is launched with the bundle as its cwd and two pipes: the sync pipe (it reports the container's
PID, or the failure, as JSON because of ``--api-version``) and the start pipe (conmon waits for one byte
before it runs ``runc create``). It double-forks, so it is never the daemon's child for long and
survives a daemon restart. It writes the CRI log, the exit code to ``<exits>/<id>`` (and ``exit`` in the
persist dir), and an ``oom`` file in the bundle on an OOM kill.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calyx_base import poll, proc
from calyx_base.errors import CommandFailed, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument
from calyx_base.instruments import observe_runtime
from cri.containers import execsync, runc_errors
from cri.containers.execsync import ExecResult
from cri.containers.procinfo import start_time

log = logging.getLogger("cri.containers.monitor")

RUNC_TIMEOUT = 60.0
# After a create's deadline: how long conmon's launcher gets to write the real conmon's pid file and
# exit, and the pid file to appear, so that the conmon left behind can be found and killed.
PID_FILE_GRACE = 5.0


@dataclass(frozen=True)
class Launched:
    pid: int
    conmon_pid: int


class Monitor:
    """One OCI runtime (runc binary + its root) driven through conmon."""

    def __init__(
        self,
        conmon: str,
        runtime_path: str,
        runtime_root: Path,
        exits_dir: Path,
        sockets_dir: Path,
        systemd_cgroup: bool = False,
    ) -> None:
        self.conmon = conmon
        self.runtime_path = runtime_path
        self.runtime_root = runtime_root
        self.exits_dir = exits_dir
        self.sockets_dir = sockets_dir
        self.systemd_cgroup = systemd_cgroup
        for d in (runtime_root, exits_dir, sockets_dir):
            d.mkdir(parents=True, exist_ok=True)

    # --- runc ---------------------------------------------------------------------------------------

    def _runc(self, *args: str) -> list[str]:
        argv = [self.runtime_path, "--root", str(self.runtime_root)]
        if self.systemd_cgroup:
            argv.append("--systemd-cgroup")
        return [*argv, *args]

    def start(self, container_id: str) -> None:
        proc.run(self._runc("start", container_id), RUNC_TIMEOUT, object_id=container_id)

    def kill(self, container_id: str, sig: int, all_processes: bool = False) -> None:
        """Send ``sig``; a container that is already gone is not an error."""
        args = ["kill", *(["--all"] if all_processes else []), container_id, str(sig)]
        result = proc.run(self._runc(*args), RUNC_TIMEOUT, check=False, object_id=container_id)
        if result.returncode != 0:
            err = result.stderr.decode(errors="replace")
            if "not running" in err or "does not exist" in err or "process already finished" in err:
                return
            raise CommandFailed(self._runc(*args), result.returncode, err, container_id)

    def delete(self, container_id: str) -> None:
        result = proc.run(self._runc("delete", "--force", container_id), RUNC_TIMEOUT, check=False)
        err = result.stderr.decode(errors="replace")
        if result.returncode != 0 and "does not exist" not in err:
            raise CommandFailed(self._runc("delete", "--force", container_id), result.returncode, err)

    def state(self, container_id: str) -> dict[str, Any] | None:
        result = proc.run(self._runc("state", container_id), RUNC_TIMEOUT, check=False)
        if result.returncode != 0:
            return None
        try:
            state: dict[str, Any] = json.loads(result.stdout)
        except ValueError:
            return None
        return state

    # --- files conmon leaves ------------------------------------------------------------------------

    def exit_file(self, container_id: str) -> Path:
        return self.exits_dir / container_id

    def exit_code(self, container_id: str, persist_dir: Path | None = None) -> int | None:
        for path in (self.exit_file(container_id), persist_dir / "exit" if persist_dir else None):
            if path is None:
                continue
            try:
                text = path.read_text().strip()
            except OSError:
                continue
            if text:
                try:
                    return int(text)
                except ValueError:
                    continue
        return None

    def exited_at_ns(self, container_id: str) -> int:
        try:
            return self.exit_file(container_id).stat().st_mtime_ns
        except OSError:
            return time.time_ns()

    @staticmethod
    def oom_killed(bundle: Path, persist_dir: Path) -> bool:
        return (bundle / "oom").exists() or (persist_dir / "oom").exists()

    def forget(self, container_id: str) -> None:
        """Remove what conmon left outside the container dir."""
        for path in (self.exit_file(container_id), self.sockets_dir / container_id):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # --- conmon -------------------------------------------------------------------------------------

    def _conmon_argv(self, container_id: str, bundle: Path, log_path: str, exits_dir: Path) -> list[str]:
        argv = [
            self.conmon,
            "--api-version",
            "-c",
            container_id,
            "-u",
            container_id,
            "-n",
            container_id,
            "-r",
            self.runtime_path,
            "-b",
            str(bundle),
            "-l",
            log_path,
            "--exit-dir",
            str(exits_dir),
            "--socket-dir-path",
            str(self.sockets_dir),
            "--runtime-arg",
            f"--root={self.runtime_root}",
        ]
        if self.systemd_cgroup:
            argv += ["-s", "--runtime-arg", "--systemd-cgroup"]
        return argv

    def create(
        self,
        container_id: str,
        bundle: Path,
        persist_dir: Path,
        log_path: str,
        stdin: bool,
        stdin_once: bool,
        tty: bool,
        timeout: float = RUNC_TIMEOUT,
    ) -> Launched:
        """conmon runs ``runc create``; return the container's init PID and conmon's PID."""
        argv = self._conmon_argv(container_id, bundle, log_path, self.exits_dir)
        argv += [
            "-p",
            str(bundle / "pidfile"),
            "-P",
            str(bundle / "conmon.pid"),
            "--persist-dir",
            str(persist_dir),
        ]
        if stdin:
            argv.append("-i")
            if not stdin_once:
                argv.append("--leave-stdin-open")
        if tty:
            argv.append("-t")
        stderr_path = persist_dir / "conmon.stderr"
        started = time.monotonic()
        try:
            data = self._launch(argv, bundle, stderr_path, timeout, container_id)
        except DeadlineExceeded:
            _kill_monitor(bundle, container_id)
            raise
        message = _first_message(data)
        pid = int(message.get("data", message.get("pid", -1)))
        observe_runtime(self.runtime_path, "create", time.monotonic() - started, pid > 0)
        if pid <= 0:
            detail = str(message.get("message") or "") or _read_tail(stderr_path)
            detail = detail or "conmon closed the sync pipe without a word"
            fault = runc_errors.request_fault(detail)
            if fault is not None:
                raise InvalidArgument(f"{fault}: {detail}", container_id)
            raise Internal(f"runc create failed under conmon: {detail}", container_id)
        conmon_pid = _read_int(bundle / "conmon.pid")
        return Launched(pid=pid, conmon_pid=conmon_pid)

    def _launch(
        self,
        argv: list[str],
        cwd: Path,
        stderr_path: Path,
        timeout: float,
        object_id: str,
    ) -> bytes:
        """Run conmon with the sync and start pipes; return its first message on the sync pipe (or what
        it wrote before closing it)."""
        sync_r, sync_w = os.pipe()
        start_r, start_w = os.pipe()
        env = dict(os.environ, _OCI_SYNCPIPE=str(sync_w), _OCI_STARTPIPE=str(start_r))
        fds = [sync_w, start_r]
        deadline = time.monotonic() + timeout
        try:
            with open(stderr_path, "ab") as errfile:
                child = subprocess.Popen(
                    argv,
                    cwd=str(cwd),
                    env=env,
                    pass_fds=fds,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errfile,
                    start_new_session=True,
                )
        except OSError as exc:
            for fd in (sync_r, sync_w, start_r, start_w):
                os.close(fd)
            raise CommandFailed(argv, -1, f"cannot run: {exc.strerror}", object_id) from None
        os.close(sync_w)
        os.close(start_r)
        with contextlib.suppress(BrokenPipeError):  # conmon refused its arguments: its stderr says why
            os.write(start_w, b"0")
        os.close(start_w)
        chunks: list[bytes] = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    # conmon's launcher writes the daemon's pid file after the fork, then exits: killed
                    # in between, it would leave a conmon nobody can find (_kill_monitor).
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.wait(PID_FILE_GRACE)
                    with contextlib.suppress(ProcessLookupError):
                        child.kill()
                    raise DeadlineExceeded(f"conmon did not answer within {timeout:g}s", object_id)
                ready, _, _ = select.select([sync_r], [], [], min(left, 1.0))
                if not ready:
                    continue
                chunk = os.read(sync_r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                # The long-lived conmon keeps the pipe open: stop at the message we wait for.
                if b"\n" in chunk:
                    break
        finally:
            os.close(sync_r)
            try:
                child.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        return b"".join(chunks)

    def exec_argv(self, container_id: str, spec_file: Path) -> list[str]:
        """``runc exec`` of the process spec in ``spec_file`` in the container, run in the foreground."""
        return [*self._runc("exec", "--process", str(spec_file)), container_id]

    def exec_sync(
        self,
        container_id: str,
        spec_path: Path,
        pid_file: Path,
        command: list[str],
        timeout_s: int,
        cancel: execsync.Cancel | None = None,
    ) -> ExecResult:
        """Run the process in ``spec_path`` in the container and wait for it (see cri.containers.execsync)."""
        return execsync.run(
            self._runc(), container_id, spec_path, pid_file, timeout_s, command, cancel=cancel
        )

    @staticmethod
    def reopen_log(bundle: Path) -> None:
        """Ask conmon to reopen the log file (kubelet rotated it). A gone conmon is FailedPrecondition."""
        try:
            fd = os.open(bundle / "ctl", os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENOENT):
                raise FailedPrecondition("container monitor is not running") from None
            raise
        try:
            os.write(fd, b"2 0 0\n")
        finally:
            os.close(fd)


def _messages(data: bytes) -> list[dict[str, Any]]:
    out = []
    for line in data.decode(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def _first_message(data: bytes) -> dict[str, Any]:
    messages = _messages(data)
    return messages[0] if messages else {"data": -1}


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return -1


def _read_tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


def signal_number(name: str) -> int:
    """A signal from an image's StopSignal ("SIGQUIT", "QUIT" or "3") or a CRI Signal enum name."""
    text = name.strip().upper()
    if not text:
        return int(signal.SIGTERM)
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise FailedPrecondition(f"unknown stop signal {name!r}") from None


def _kill_monitor(bundle: Path, container_id: str) -> None:
    """A conmon that did not answer in time is killed with its ``runc create``: conmon made itself a
    session leader, so its process group holds both (the child we started has exited long ago). Its
    pid file may still be on its way: it gets PID_FILE_GRACE to appear."""
    pid_file = bundle / "conmon.pid"
    poll.until(lambda: _read_int(pid_file) > 0, PID_FILE_GRACE, 0.02)
    pid = _read_int(pid_file)
    try:
        if pid <= 0 or container_id.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        return
    log.warning("unanswering container monitor killed", extra={"container_id": container_id, "pid": pid})


def check_log_path(path: str, container_id: str) -> None:
    """conmon reads ``-l`` as ``[driver:]path`` and ends the path at the next ':' (measured: "k8s-file:
    /logs/a:b.log" writes /logs/a), so a log path holding one would be cut short or name a driver."""
    if ":" in path:
        raise InvalidArgument(f"log path {path!r} contains ':', which conmon cannot write to", container_id)


def wait_monitor_gone(container_id: str, bundle: Path, pid: int = 0, timeout: float = 5.0) -> None:
    """conmon writes the exit file and then exits: let it finish before its files are removed.

    Without a recorded PID (a crash mid-create) it comes from the bundle's conmon.pid; either is trusted
    only while /proc/<pid>/cmdline names this container.
    """
    if pid <= 0:
        pid = _read_int(bundle / "conmon.pid")
        if pid <= 0:
            return

    def gone() -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True
        return container_id.encode() not in cmdline or start_time(pid) is None  # a zombie is gone too

    if not poll.until(gone, timeout, 0.02):
        log.warning("container monitor still running", extra={"container_id": container_id, "pid": pid})
