"""Interface counters of a pod's network namespace, read over rtnetlink with pyroute2.

pyroute2's own ``IPRoute(netns=PATH, flags=0)`` forks a helper process to make the socket inside the
namespace (about 10 ms here); a sample for every pod on every scrape cannot afford that. Instead a
short-lived thread joins the namespace with setns(2) (which changes only that thread), opens the netlink
socket there and ends; the socket stays bound to the namespace and pyroute2 speaks over it (~1 ms).
The socket is closed after each sample, so Calyx never holds a removed pod's namespace alive.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
from typing import Any

from pyroute2 import IPRoute

from metrics.readings import InterfaceReading, NetworkSample

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_COUNTERS = (
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
)


def netlink_socket_in(netns_path: str) -> socket.socket:
    """A NETLINK_ROUTE socket created inside the (existing) namespace pinned at ``netns_path``."""
    result: dict[str, Any] = {}

    def enter_and_open() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns_path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["sock"] = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
        except BaseException as exc:
            result["error"] = exc

    # This thread ends inside the pod's namespace; it is never reused, so nothing else runs there.
    worker = threading.Thread(target=enter_and_open, name="netns-sample", daemon=True)
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    sock: socket.socket = result["sock"]
    return sock


def _interface(link: Any) -> InterfaceReading:
    stats = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS") or {}
    values = {name: int(stats.get(name, 0)) for name in _COUNTERS}
    return InterfaceReading(name=str(link.get_attr("IFLA_IFNAME")), **values)


def read_netns(netns_path: str) -> NetworkSample:
    """Counters of every interface in the namespace pinned at ``netns_path`` (loopback included).

    Raises FileNotFoundError if the pin is gone, OSError if it is not a network namespace.
    """
    sock = netlink_socket_in(netns_path)
    try:
        with IPRoute(use_socket=sock) as ipr:
            links = ipr.get_links()
            timestamp = time.time_ns()
    finally:
        sock.close()
    return NetworkSample(timestamp_ns=timestamp, interfaces=tuple(_interface(link) for link in links))


def read_current() -> NetworkSample:
    """The calling process's own namespace (the host's, for the daemon)."""
    with IPRoute() as ipr:
        links = ipr.get_links()
    return NetworkSample(timestamp_ns=time.time_ns(), interfaces=tuple(_interface(link) for link in links))
