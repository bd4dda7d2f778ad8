"""Sockets made inside a pod's pinned network namespace, without moving any thread the daemon reuses.

A socket belongs for its whole life to the netns of the thread that created it. So a short-lived thread
of its own joins the namespace with setns(2) (which changes only that thread), creates the socket and
ends; the caller then uses the socket from any thread. Opening the pin never creates a namespace that is
missing (pyroute2's ``IPRoute(netns=PATH)`` would, and forks a helper costing ~30 ms; this costs ~1 ms).
Used by the built-in network (netlink inside the pod), the stats (interface counters) and port-forward.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def socket_in(netns_path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """``socket.socket(family, kind, proto)`` created inside the (existing) netns pinned at ``netns_path``.

    Raises FileNotFoundError if the pin is gone, OSError if it is not a network namespace.
    """
    result: dict[str, socket.socket | BaseException] = {}

    def enter_and_open() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns_path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["sock"] = socket.socket(family, kind, proto)
        except BaseException as exc:
            result["error"] = exc

    # This thread ends inside the pod's namespace; it is never reused, so nothing else runs there.
    worker = threading.Thread(target=enter_and_open, name="netns-socket", daemon=True)
    worker.start()
    worker.join()
    error = result.get("error")
    if isinstance(error, BaseException):
        raise error
    sock = result["sock"]
    assert isinstance(sock, socket.socket)
    return sock


def netlink_socket_in(netns_path: str) -> socket.socket:
    """A NETLINK_ROUTE socket inside the netns pinned at ``netns_path`` (for ``IPRoute(use_socket=)``)."""
    return socket_in(netns_path, socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)


def iproute(**kwargs: Any) -> IPRoute:
    """pyroute2's ``IPRoute(**kwargs)``, imported on first use: importing any part of pyroute2 loads
    ~200 modules and ~10 MB of resident memory, which an idle daemon or one on CNI does not need."""
    from pyroute2 import IPRoute

    return IPRoute(**kwargs)
