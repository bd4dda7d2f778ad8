"""Interface counters of a pod's network namespace, read over rtnetlink with pyroute2.

pyroute2's own ``IPRoute(netns=PATH, flags=0)`` forks a helper process to make the socket inside the
namespace (about 10 ms here); a sample for every pod on every scrape cannot afford that. Instead
pyroute2 speaks over a netlink socket made inside the namespace (sandbox.netns, ~1 ms). The socket is
closed after each sample, so Calyx never holds a removed pod's namespace alive.
"""

from __future__ import annotations

import time
from typing import Any

from metrics.readings import InterfaceReading, NetworkSample
from sandbox.netns import iproute, netlink_socket_in

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
        with iproute(use_socket=sock) as ipr:
            links = ipr.get_links()
            timestamp = time.time_ns()
    finally:
        sock.close()
    return NetworkSample(timestamp_ns=timestamp, interfaces=tuple(_interface(link) for link in links))
