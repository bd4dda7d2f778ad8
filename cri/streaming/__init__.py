"""Exec, attach and port-forward streaming (SPDY/3.1 and WebSocket), served inside the daemon.

``runtime.streaming`` is the ``StreamingServer``; the CRI Exec/Attach/PortForward RPCs
(cri/server/streaming.py) ask it for a single-use URL.
"""

from __future__ import annotations

from cri.runtime import Runtime


def register(runtime: Runtime) -> None:
    from cri.streaming.backend import ContainerBackend
    from cri.streaming.server import StreamingServer

    runtime.register("streaming", StreamingServer(runtime.config.streaming, ContainerBackend(runtime)))
