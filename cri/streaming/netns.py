"""TCP sockets that live in a pod's network namespace, for port-forward.

A socket belongs to the netns of the thread that created it, for its whole life; sandbox.netns makes it
in a short-lived thread of its own, and the event loop then connects and uses it like any other. No
thread the daemon reuses ever leaves the host's netns.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from sandbox import netns


def socket_in_netns(netns_path: str | None, family: int = socket.AF_INET) -> socket.socket:
    """A new non-blocking TCP socket in ``netns_path`` (None: the host's network namespace)."""
    kind = socket.SOCK_STREAM | socket.SOCK_CLOEXEC
    sock = socket.socket(family, kind) if netns_path is None else netns.socket_in(netns_path, family, kind)
    sock.setblocking(False)
    return sock


async def connect_localhost(netns_path: str | None, port: int) -> socket.socket:
    """Connect to localhost:port as the pod sees it: 127.0.0.1 first, then ::1."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = await asyncio.to_thread(socket_in_netns, netns_path, family)
        except OSError as exc:
            last = exc
            continue
        try:
            await loop.sock_connect(sock, (host, port))
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if exc.errno not in (errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH):
                break
    assert last is not None
    raise last
