"""Exec, attach and port-forward streaming (SPDY/3.1 and WebSocket), served inside the daemon.

``StreamingServer`` (server.py) is the entry; the CRI Exec/Attach/PortForward RPCs
(cri/server/streaming.py) ask it for a single-use URL; ``ContainerBackend`` (backend.py) runs what a
session asks for in the containers.
"""
