"""TCP sockets that live in a pod's network namespace, for port-forward.

A socket belongs to the netns of the thread that created it, for its whole life. So a short-lived
thread of its own joins the pod's netns (setns), creates the socket and ends; the event loop then
connects and uses it like any other. No thread the daemon reuses ever leaves the host's netns.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import threading

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def socket_in_netns(netns_path: str | None, family: int = socket.AF_INET) -> socket.socket:
    """A new non-blocking TCP socket in ``netns_path`` (None: the host's network namespace)."""
    if netns_path is None:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        return sock
    result: dict[str, object] = {}

    def work() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            result["sock"] = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=work, name="netns-socket", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    made = result["sock"]
    assert isinstance(made, socket.socket)
    made.setblocking(False)
    return made


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
