"""The streaming server in-process with a backend that runs commands on the host.

For protocol tests only (framing, negotiation, tokens, flow control, disconnects): the e2e tests in
tests/e2e/test_streaming.py run the same protocols against real containers in real pods.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from calyx_base.errors import NotFound
from cri.config import StreamingConfig
from cri.streaming.process import ExecProcess
from cri.streaming.server import StreamingServer
from cri.streaming.session_requests import AttachRequest, ExecRequest


class HostBackend:
    def __init__(self) -> None:
        self.netns: dict[str, str | None] = {}
        self.spawned: list[ExecProcess] = []

    def exec_process(self, request: ExecRequest, size: tuple[int, int] | None = None) -> ExecProcess:
        proc = ExecProcess(
            request.cmd,
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
            size=size,
        )
        self.spawned.append(proc)
        return proc

    def attach_target(self, request: AttachRequest) -> Any:
        raise NotFound("the host backend has no containers to attach to", request.container_id)

    def pod_netns(self, pod_id: str) -> str | None:
        if pod_id not in self.netns:
            raise NotFound("no such pod", pod_id)
        return self.netns[pod_id]

    def reap_orphans(self) -> None:
        """The host runs no container whose exec sessions a previous run could have left."""


@contextmanager
def host_server(**options: Any) -> Iterator[tuple[StreamingServer, HostBackend]]:
    backend = HostBackend()
    server = StreamingServer(StreamingConfig(**options), backend)
    server.start()
    try:
        yield server, backend
    finally:
        server.close()
        for proc in backend.spawned:
            if proc.returncode is None:
                proc.popen.kill()
                proc.popen.wait()


def exec_url(
    server: StreamingServer,
    cmd: list[str],
    *,
    tty: bool = False,
    stdin: bool = False,
    stdout: bool = True,
    stderr: bool = True,
) -> str:
    return server.url_for("exec", ExecRequest("host", cmd, tty, stdin, stdout, stderr))
