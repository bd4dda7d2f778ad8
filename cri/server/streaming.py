"""CRI Exec, Attach and PortForward: validate, then hand out a single-use streaming URL.

Nothing runs here: the process starts when the client connects to the URL (cri/streaming/).
"""

from __future__ import annotations

import grpc

from calyx_base.errors import InvalidArgument
from cri import fields
from cri.api import api_pb2 as pb
from cri.streaming.portforward import MAX_FORWARDED_PORTS
from cri.streaming.session_requests import AttachRequest, ExecRequest, PortForwardRequest
from cri.streaming.urls import StreamURLs


class StreamingRPCs:
    stream_urls: StreamURLs

    @staticmethod
    def _check_container_id(container_id: str) -> None:
        if not container_id:
            raise InvalidArgument("container_id is required")

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
        self._check_container_id(request.container_id)
        url = self.stream_urls.exec(
            ExecRequest(
                request.container_id,
                list(request.cmd),
                request.tty,
                request.stdin,
                request.stdout,
                request.stderr,
            )
        )
        return pb.ExecResponse(url=url)

    def Attach(self, request: pb.AttachRequest, context: grpc.ServicerContext) -> pb.AttachResponse:
        self._check_stdio(request.tty, request.stdin, request.stdout, request.stderr)
        self._check_container_id(request.container_id)
        url = self.stream_urls.attach(
            AttachRequest(request.container_id, request.tty, request.stdin, request.stdout, request.stderr)
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
        url = self.stream_urls.port_forward(PortForwardRequest(request.pod_sandbox_id, list(request.port)))
        return pb.PortForwardResponse(url=url)
