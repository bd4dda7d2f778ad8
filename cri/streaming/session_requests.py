"""What an exec, attach or port-forward URL stands for (the request its token was issued for), and what
the streaming server needs of the containers to serve it (``Backend``; ``cri.streaming.backend``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from cri.streaming import remotecommand as rc
from cri.streaming.process import ExecProcess


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: list[str]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class PortForwardRequest:
    pod_id: str
    ports: list[int] = field(default_factory=list)


class Backend(Protocol):
    """What the server needs of the containers; ``cri.streaming.backend`` implements it.

    The server makes the session calls on worker threads, never on its event loop, so they may block
    (fork runc, wait for a container's lock); ``reap_orphans`` runs before the loop starts.
    """

    def exec_process(self, request: ExecRequest, size: tuple[int, int] | None) -> ExecProcess:
        """Spawn the exec (e.g. ``runc exec``) with the stdio the request asks for; ``size`` is the
        terminal's initial (width, height) when known."""

    def attach_target(self, request: AttachRequest) -> rc.AttachTarget:
        """The container's attach socket and resize function."""

    def pod_netns(self, pod_id: str) -> str | None:
        """Path of the pod's network namespace; None for host-network pods."""

    def reap_orphans(self) -> None:
        """At start: what sessions of a previous daemon left running goes."""
