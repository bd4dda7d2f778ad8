"""CRI Exec, Attach and PortForward: validate, then hand out a single-use streaming URL.

Nothing runs here: the process starts when the client connects to the URL (cri/streaming/).
"""

from __future__ import annotations

import grpc

from calyx_base.errors import FailedPrecondition, InvalidArgument
from cri import fields
from cri.api import api_pb2 as pb
from cri.containers.model import Container
from cri.containers.subsystem import Containers
from cri.pods.model import READY
from cri.pods.service import PodService
from cri.streaming.backend import running_container
from cri.streaming.portforward import MAX_FORWARDED_PORTS
from cri.streaming.server import StreamingServer
from cri.streaming.session_requests import AttachRequest, ExecRequest, PortForwardRequest


class StreamingRPCs:
    streaming: StreamingServer
    containers: Containers
    pods: PodService

    def _running(self, container_id: str) -> Container:
        if not container_id:
            raise InvalidArgument("container_id is required")
        return running_container(self.containers.exits, container_id)

    @staticmethod
    def _check_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
        if tty and stderr:
            raise InvalidArgument("tty and stderr cannot both be true: a terminal has one output stream")
        if not (stdin or stdout or stderr):
            raise InvalidArgument("one of stdin, stdout or stderr must be set")

    def Exec(self, request: pb.ExecRequest, context: grpc.ServicerContext) -> pb.ExecResponse:
        if not request.cmd:
            raise InvalidArgument("cmd is required", request.container_id or None)
        for arg in request.cmd:
            fields.no_nul("cmd argument", arg)
        self._check_stdio(request.tty, request.stdin, request.stdout, request.stderr)
        container = self._running(request.container_id)
        url = self.streaming.url_for(
            "exec",
            ExecRequest(
                container.id, list(request.cmd), request.tty, request.stdin, request.stdout, request.stderr
            ),
        )
        return pb.ExecResponse(url=url)

    def Attach(self, request: pb.AttachRequest, context: grpc.ServicerContext) -> pb.AttachResponse:
        self._check_stdio(request.tty, request.stdin, request.stdout, request.stderr)
        container = self._running(request.container_id)
        url = self.streaming.url_for(
            "attach", AttachRequest(container.id, request.tty, request.stdin, request.stdout, request.stderr)
        )
        return pb.AttachResponse(url=url)

    def PortForward(
        self, request: pb.PortForwardRequest, context: grpc.ServicerContext
    ) -> pb.PortForwardResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        if len(request.port) > MAX_FORWARDED_PORTS:
            raise InvalidArgument(
                f"{len(request.port)} ports to forward (at most {MAX_FORWARDED_PORTS})",
                request.pod_sandbox_id,
            )
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is not between 1 and 65535", request.pod_sandbox_id)
        pod = self.pods.index.get(request.pod_sandbox_id)
        if pod.state != READY:
            raise FailedPrecondition(f"pod {pod.id} is not ready", pod.id)
        url = self.streaming.url_for("portforward", PortForwardRequest(pod.id, list(request.port)))
        return pb.PortForwardResponse(url=url)
