"""Netlink requests sent as one batch: pyroute2 compiles them (``IPBatch``), one write carries them all
and the kernel answers each with an acknowledgement, in order.

A pod's links are a handful of messages (the veth pair; addresses, links up and routes inside the pod).
Sent one by one through ``IPRoute`` each costs a round trip and pyroute2's per-request machinery
(~0.3 ms here); batched they cost one write and one read. The kernel goes on with the next message
when one fails, so every answer is read before the first failure is raised.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence number, port id
NLMSG_ERROR = 2  # an acknowledgement: error code 0, or -errno


def host_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the daemon's own (the host's) network namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


class NetlinkError(OSError):
    """A request of a batch failed; ``errno`` is the kernel's answer, the message names the request."""


class NetlinkBatch:
    """Requests added by name of the ``IPRoute`` method that makes them (``link``, ``addr``, ``route``,
    ``neigh``), then sent together with ``send``."""

    def __init__(self) -> None:
        from pyroute2 import IPBatch  # pyroute2 is imported on first use (see sandbox.netns.iproute)

        self._compiler = IPBatch()
        self._pending: dict[int, tuple[str, frozenset[int]]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, what: str, method: str, *args: Any, tolerate: tuple[int, ...] = (), **kwargs: Any) -> None:
        """Compile one request; ``what`` names it in errors; errno values in ``tolerate`` are no error
        (ENOENT for a neighbour entry already gone, say)."""
        start = len(self._compiler.batch)
        getattr(self._compiler, method)(*args, **kwargs)
        if len(self._compiler.batch) == start:
            raise ValueError(f"pyroute2 compiled no request for {what}")
        sequence = HEADER.unpack_from(self._compiler.batch, start)[3]
        self._pending[sequence] = (what, frozenset(tolerate))

    def send(self, sock: socket.socket, timeout: float = 10.0) -> None:
        """Send every request in one write, wait for each answer; raise NetlinkError for the first one
        that failed. The batch is spent either way."""
        data = bytes(self._compiler.batch)
        self._compiler.close()
        waiting, self._pending = self._pending, {}
        if not waiting:
            return
        sock.settimeout(timeout)
        sock.send(data)
        failures: list[tuple[str, int]] = []
        while waiting:
            chunk = sock.recv(65536)
            offset = 0
            while offset + HEADER.size <= len(chunk):
                length, kind, _flags, sequence, _port = HEADER.unpack_from(chunk, offset)
                if length < HEADER.size:
                    break
                if kind == NLMSG_ERROR and sequence in waiting:
                    code = -struct.unpack_from("=i", chunk, offset + HEADER.size)[0]
                    what, tolerated = waiting.pop(sequence)
                    if code and code not in tolerated:
                        failures.append((what, code))
                offset += (length + 3) & ~3
        if failures:
            what, code = failures[0]
            raise NetlinkError(code, f"{what}: {os.strerror(code)}")


RTM_NEWADDR, RTM_GETADDR = 20, 22
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_DONE = 3
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
RTATTR = struct.Struct("=HH")  # length, type
IFA_ADDRESS = 1


def addresses_of(sock: socket.socket, index: int, timeout: float = 10.0) -> set[tuple[str, int]]:
    """(address, prefix length) of every address of interface ``index``: one RTM_GETADDR dump, read
    here rather than through pyroute2, whose decoding of every address on the host costs milliseconds
    where this needs the IFA_ADDRESS of one interface."""
    request = HEADER.pack(HEADER.size + IFADDRMSG.size, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    sock.settimeout(timeout)
    sock.send(request + IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
    found: set[tuple[str, int]] = set()
    while True:
        chunk = sock.recv(65536)
        offset = 0
        while offset + HEADER.size <= len(chunk):
            length, kind, _flags, _sequence, _port = HEADER.unpack_from(chunk, offset)
            if length < HEADER.size or kind == NLMSG_DONE:
                return found
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", chunk, offset + HEADER.size)[0]
                raise NetlinkError(code, f"list the addresses of interface {index}: {os.strerror(code)}")
            body = offset + HEADER.size
            family, prefixlen, _, _, owner = IFADDRMSG.unpack_from(chunk, body)
            if kind == RTM_NEWADDR and owner == index:
                attr, end = body + IFADDRMSG.size, offset + length
                while attr + RTATTR.size <= end:
                    size, kind_of_attr = RTATTR.unpack_from(chunk, attr)
                    if size < RTATTR.size:
                        break
                    if kind_of_attr == IFA_ADDRESS:
                        raw = chunk[attr + RTATTR.size : attr + size]
                        found.add((socket.inet_ntop(family, raw), prefixlen))
                    attr += (size + 3) & ~3
            offset += (length + 3) & ~3
