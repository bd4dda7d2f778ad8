"""The single-use URLs of Exec, Attach and PortForward, handed out only for what can be streamed now: a
running container, a ready pod. Nothing runs yet: the session starts when the client connects."""

from __future__ import annotations

import dataclasses

from calyx_base.errors import FailedPrecondition
from cri.containers.exits import ExitTracker
from cri.pods.index import PodIndex
from cri.pods.model import READY
from cri.streaming.backend import running_container
from cri.streaming.server import StreamingServer
from cri.streaming.session_requests import AttachRequest, ExecRequest, PortForwardRequest


class StreamURLs:
    """Each request names its container or pod by full id or unique prefix; the URL's request carries
    the full id."""

    def __init__(self, server: StreamingServer, containers: ExitTracker, pods: PodIndex) -> None:
        self.server = server
        self.containers = containers
        self.pods = pods

    def exec(self, request: ExecRequest) -> str:
        container = running_container(self.containers, request.container_id)
        return self.server.url_for("exec", dataclasses.replace(request, container_id=container.id))

    def attach(self, request: AttachRequest) -> str:
        container = running_container(self.containers, request.container_id)
        return self.server.url_for("attach", dataclasses.replace(request, container_id=container.id))

    def port_forward(self, request: PortForwardRequest) -> str:
        pod = self.pods.get(request.pod_id)
        if pod.state != READY:
            raise FailedPrecondition(f"pod {pod.id} is not ready", pod.id)
        return self.server.url_for("portforward", dataclasses.replace(request, pod_id=pod.id))
