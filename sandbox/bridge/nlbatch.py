"""Netlink requests sent as one batch: one write carries them all and the kernel answers each with an
acknowledgement, in order.

A pod's links are a handful of messages (the veth pair; addresses, links up and routes inside the pod).
Through pyroute2's ``IPRoute`` each costs a round trip and its per-request machinery (an asyncio loop
run per call: 0.2-1.8 ms of Python each here, ``IPBatch`` included); here each message is encoded by
pyroute2's message classes alone (0.02-0.2 ms; the bytes are the same, see the unit test) and all of
them go in one write. The kernel goes on with the next message when one fails, so every answer is read
before the first failure is raised.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
import struct
from typing import Any

from sandbox.bridge.ipam import Interface

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence number, port id
NLMSG_ERROR = 2  # an acknowledgement: error code 0, or -errno
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_DELNEIGH = 16, 17, 20, 24, 29
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
CHANGE = NLM_F_REQUEST | NLM_F_ACK
IFF_UP = 0x1
IFA_F_NODAD = 0x02  # linux/if_addr.h: no duplicate address detection for this address
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1
NUD_PERMANENT = 0x80  # what ip(8) and pyroute2 put in a neighbour deletion (the kernel ignores it)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_sequence = itertools.count(1)


def host_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the daemon's own (the host's) network namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


def _family(version: int) -> int:
    return socket.AF_INET6 if version == 6 else socket.AF_INET


class NetlinkError(OSError):
    """A request of a batch failed; ``errno`` is the kernel's answer, the message names the request."""


class NetlinkBatch:
    """The requests the built-in network makes, each named for errors, then sent together (``send``)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._pending: dict[int, tuple[str, frozenset[int]]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def _add(
        self,
        what: str,
        message: Any,
        kind: int,
        flags: int,
        fields: dict[str, int],
        attrs: list[tuple[str, Any]],
        tolerate: tuple[int, ...] = (),
    ) -> None:
        sequence = next(_sequence) & 0xFFFFFFFF
        message["header"]["type"] = kind
        message["header"]["flags"] = flags
        message["header"]["sequence_number"] = sequence
        for name, value in fields.items():
            message[name] = value
        message["attrs"] = attrs
        message.encode()
        self._data += message.data
        self._pending[sequence] = (what, frozenset(tolerate))

    def create_bridge(self, name: str, mac: str) -> None:
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        kind = ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})
        self._add(
            f"create bridge {name}",
            ifinfmsg(),
            RTM_NEWLINK,
            CREATE,
            {},
            [("IFLA_IFNAME", name), ("IFLA_ADDRESS", mac), kind],
            (errno.EEXIST,),
        )

    def create_veth(self, what: str, name: str, master: int, peer: str, peer_netns_fd: int) -> None:
        """A veth pair: ``name`` plugged into ``master`` and up, ``peer`` made in the netns open at
        ``peer_netns_fd`` (down)."""
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        peer_info = {"attrs": [("IFLA_IFNAME", peer), ("IFLA_NET_NS_FD", peer_netns_fd)]}
        data = {"attrs": [("VETH_INFO_PEER", peer_info)]}
        info = ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", data)]})
        attrs = [("IFLA_IFNAME", name), ("IFLA_MASTER", master), info]
        self._add(what, ifinfmsg(), RTM_NEWLINK, CREATE, {"flags": IFF_UP, "change": IFF_UP}, attrs)

    def delete_link(self, what: str, index: int) -> None:
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        self._add(what, ifinfmsg(), RTM_DELLINK, CHANGE, {"index": index}, [], (errno.ENODEV,))

    def set_up(self, what: str, index: int, master: int | None = None) -> None:
        """Bring the link up (and plug it into ``master``)."""
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        attrs = [("IFLA_MASTER", master)] if master is not None else []
        fields = {"index": index, "flags": IFF_UP, "change": IFF_UP}
        self._add(what, ifinfmsg(), RTM_NEWLINK, CHANGE, fields, attrs)

    def add_address(self, what: str, index: int, address: Interface) -> None:
        """IPv6 addresses skip duplicate address detection (``nodad``): they come from our own leases,
        and DAD would keep them unusable ("tentative") for a second or more after the pod starts."""
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

        ip = str(address.ip)
        fields = {"family": _family(address.version), "prefixlen": address.network.prefixlen, "index": index}
        if address.version == 6:
            attrs: list[tuple[str, Any]] = [("IFA_ADDRESS", ip), ("IFA_FLAGS", IFA_F_NODAD)]
        else:
            attrs = [("IFA_ADDRESS", ip), ("IFA_LOCAL", ip)]
        self._add(what, ifaddrmsg(), RTM_NEWADDR, CREATE, fields, attrs)

    def add_default_route(self, gateway: Address) -> None:
        from pyroute2.netlink.rtnl.rtmsg import rtmsg

        fields = {
            "family": _family(gateway.version),
            "table": RT_TABLE_MAIN,
            "proto": RTPROT_STATIC,
            "type": RTN_UNICAST,
        }
        what = f"add the default route via {gateway}"
        self._add(what, rtmsg(), RTM_NEWROUTE, CREATE, fields, [("RTA_GATEWAY", str(gateway))])

    def forget_neighbour(self, ip: str, index: int) -> None:
        """Delete the neighbour entry of ``ip`` on interface ``index`` (none is no error)."""
        from pyroute2.netlink.rtnl.ndmsg import ndmsg

        fields = {
            "family": _family(ipaddress.ip_address(ip).version),
            "ifindex": index,
            "state": NUD_PERMANENT,
        }
        tolerate = (errno.ENOENT, errno.ENODEV)
        self._add(
            f"forget the neighbour {ip}", ndmsg(), RTM_DELNEIGH, CHANGE, fields, [("NDA_DST", ip)], tolerate
        )

    def send(self, sock: socket.socket, timeout: float = 10.0) -> None:
        """Send every request in one write, wait for each answer; raise NetlinkError for the first one
        that failed. The batch is spent either way."""
        data, self._data = bytes(self._data), bytearray()
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


RTM_GETADDR, NLM_F_DUMP, NLMSG_DONE = 22, 0x300, 3
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
