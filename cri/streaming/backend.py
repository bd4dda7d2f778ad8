"""What the streaming server runs in the containers: exec through ``runc exec``, attach through conmon,
port-forward into the pod's network namespace.

Exec: ``ContainerExec.exec_argv`` gives the ``runc --root <root> exec --process <spec> <id>``
argv (the container's own process spec with the new args, so env, user, cwd, capabilities and
seccomp are the container's). runc runs in the foreground with our pipes or pty as its stdio, relays
the container's terminal and exits with the command's code; ``--pid-file`` tells where the process
is so a departed client's process can be killed (killing runc alone would orphan it).

Attach: conmon serves the container's stdio on ``<bundle>/attach`` (SOCK_SEQPACKET; each packet from
conmon starts with 2 for stdout or 3 for stderr; what we send is stdin) and takes resize requests on
the bundle's ``ctl`` fifo as ``1 <height> <width>``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
from pathlib import Path

from calyx_base import failpoints, files
from calyx_base.errors import FailedPrecondition
from cri.containers.exec import ContainerExec
from cri.containers.exits import ExitTracker
from cri.containers.model import RUNNING, Container
from cri.pods.index import PodIndex
from cri.streaming.process import ExecProcess
from cri.streaming.remotecommand import AttachTarget
from cri.streaming.session_requests import AttachRequest, ExecRequest

log = logging.getLogger("cri.streaming.backend")

RESIZE_EVENT = 1  # conmon's ctl message type for a terminal resize


def running_container(containers: ExitTracker, container_id: str) -> Container:
    """The container, if it is running: exec and attach (and the RPCs that hand out their URLs) need one."""
    container = containers.get(container_id)
    if container.state != RUNNING:
        raise FailedPrecondition(f"container {container.id} is not running", container.id)
    return container


def resize_via_ctl(bundle: Path, width: int, height: int) -> None:
    """Ask conmon to resize the container's terminal; a conmon that is gone is not an error."""
    try:
        fd = os.open(bundle / "ctl", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return
        raise
    with contextlib.suppress(OSError):
        os.write(fd, f"{RESIZE_EVENT} {height} {width}\n".encode())
    os.close(fd)


class ContainerBackend:
    def __init__(self, containers: ExitTracker, execs: ContainerExec, pods: PodIndex) -> None:
        self.containers = containers
        self.execs = execs
        self.pods = pods

    def exec_process(self, request: ExecRequest, size: tuple[int, int] | None = None) -> ExecProcess:
        argv, spec_file = self.execs.exec_argv(request.container_id, request.cmd, request.tty)
        spec_path = Path(spec_file)
        if size is not None and request.tty:
            # runc sizes the container's terminal before the command starts; later resizes go
            # through our pty and runc's SIGWINCH relay.
            process = json.loads(spec_path.read_text())
            process["consoleSize"] = {"width": size[0], "height": size[1]}
            files.replace_text(spec_path, json.dumps(process))
        pid_file = spec_path.with_suffix(".pid")
        argv = [*argv[:-1], "--pid-file", str(pid_file), argv[-1]]
        try:
            process = ExecProcess(
                argv,
                tty=request.tty,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
                pid_file=pid_file,
                size=size,
                cleanup=[spec_path],
                raw=True,
            )
        except BaseException:
            spec_path.unlink(missing_ok=True)
            raise
        try:
            failpoints.hit("streaming.exec_after_spawn", container_id=request.container_id)
        except BaseException:
            process.discard()
            raise
        return process

    def attach_target(self, request: AttachRequest) -> AttachTarget:
        container = running_container(self.containers, request.container_id)
        bundle = Path(container.bundle)
        return AttachTarget(
            socket_path=str(bundle / "attach"),
            resize=lambda width, height: resize_via_ctl(bundle, width, height),
            tty=request.tty,
        )

    def pod_netns(self, pod_id: str) -> str | None:
        path = self.pods.get(pod_id).netns_path
        return str(path) if path else None

    def reap_orphans(self) -> None:
        """At start: kill exec processes a previous daemon left when it died mid-session.

        Each session (and each ExecSync) leaves ``<container>/exec/<id>.pid`` (runc's pid file) and
        ``<id>.json`` (the process spec) until it ends. No session survives a restart, so any such pair
        is an orphan; its process (and its process group) is killed if it is still running inside that
        container (same mount namespace as the container's init), then the files go.
        """
        for container in self.containers.list():
            exec_dir = Path(container.path) / "exec"
            if not exec_dir.is_dir():
                continue
            for pid_file in exec_dir.glob("*.pid"):
                if container.state == RUNNING and container.pid:
                    _kill_in_container(pid_file, container.pid, container.id)
                pid_file.unlink(missing_ok=True)
                pid_file.with_suffix(".json").unlink(missing_ok=True)
            for spec in exec_dir.glob("*.json"):
                spec.unlink(missing_ok=True)


def _kill_in_container(pid_file: Path, init_pid: int, container_id: str) -> None:
    try:
        pid = int(pid_file.read_text().strip())
        fd = os.pidfd_open(pid)
    except (OSError, ValueError):
        return
    try:
        if os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink(f"/proc/{init_pid}/ns/mnt"):
            return  # the PID was reused by something else
        with contextlib.suppress(OSError):  # what it started too (runc made it a group leader)
            os.killpg(pid, signal.SIGKILL)
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        log.info(
            "killed an exec process left by a previous run", extra={"container_id": container_id, "pid": pid}
        )
    except OSError:
        pass
    finally:
        os.close(fd)
