"""Sockets made inside a pod's pinned network namespace, without moving any thread the daemon reuses.

A socket belongs for its whole life to the netns of the thread that created it. So a short-lived thread
of its own joins the namespace with setns(2) (which changes only that thread), creates the socket and
ends; the caller then uses the socket from any thread. Opening the pin never creates a namespace that is
missing (pyroute2's ``IPRoute(netns=PATH)`` would, and forks a helper costing ~30 ms; this costs ~1 ms).
Used by the built-in network (netlink inside the pod), the stats (interface counters) and port-forward;
``call_in`` runs any short function that way (the built-in network writes the pod's sysctls with it).
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sandbox.libc import LIBC

if TYPE_CHECKING:
    from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def call_in(netns_path: str, fn: Callable[[], T]) -> T:
    """``fn()`` run inside the (existing) netns pinned at ``netns_path``, on a short-lived thread of its
    own; its result or exception is the caller's. Sockets it creates and /proc/sys/net files it opens
    belong to that namespace.

    Raises FileNotFoundError if the pin is gone, OSError if it is not a network namespace.
    """
    result: dict[str, Any] = {}

    def enter_and_call() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if LIBC.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns_path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    # This thread ends inside the pod's namespace; it is never reused, so nothing else runs there.
    worker = threading.Thread(target=enter_and_call, name="netns-call", daemon=True)
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return cast(T, result["value"])


def socket_in(netns_path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """``socket.socket(family, kind, proto)`` created inside the (existing) netns pinned at ``netns_path``."""
    return call_in(netns_path, lambda: socket.socket(family, kind, proto))


def netlink_socket_in(netns_path: str) -> socket.socket:
    """A NETLINK_ROUTE socket inside the netns pinned at ``netns_path`` (for ``IPRoute(use_socket=)``)."""
    return socket_in(netns_path, socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)


def iproute(**kwargs: Any) -> IPRoute:
    """pyroute2's ``IPRoute(**kwargs)``, imported on first use: importing any part of pyroute2 loads
    ~200 modules and ~10 MB of resident memory, which an idle daemon or one on CNI does not need."""
    from pyroute2 import IPRoute

    return IPRoute(**kwargs)
