"""The built-in network's netlink requests, encoded with pyroute2's message classes alone, are the very
bytes pyroute2's own request compiler (``IPBatch``, what ``IPRoute`` sends) makes of the same requests;
and a batch sent to the kernel reports the request that failed, after reading every answer."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

import pytest

from sandbox.bridge.nlbatch import CREATE, HEADER, NetlinkBatch, NetlinkError, host_socket


def _pyroute2(method: str, *args: object, **kwargs: object) -> bytes:
    from pyroute2 import IPBatch

    compiler = IPBatch()
    try:
        getattr(compiler, method)(*args, **kwargs)
        return bytes(compiler.batch)
    finally:
        compiler.close()


def _ours(add: str, *args: object) -> bytes:
    batch = NetlinkBatch()
    getattr(batch, add)(*args)
    return bytes(batch._data)


def _without_sequence(message: bytes) -> tuple[int, int, int, bytes]:
    length, kind, flags, _sequence, _port = HEADER.unpack_from(message, 0)
    return length, kind, flags, message[HEADER.size :]


CASES = [
    (
        ("create_bridge", "cxq0", "02:5a:00:00:00:01"),
        ("link", "add"),
        {"ifname": "cxq0", "address": "02:5a:00:00:00:01", "kind": "bridge"},
    ),
    (
        ("create_veth", "a veth", "cxvabc", 7, "eth0", 5),
        ("link", "add"),
        {
            "ifname": "cxvabc",
            "kind": "veth",
            "master": 7,
            "state": "up",
            "peer": {"ifname": "eth0", "net_ns_fd": 5},
        },
    ),
    (("delete_link", "delete", 9), ("link", "del"), {"index": 9}),
    (("set_up", "up", 9), ("link", "set"), {"index": 9, "state": "up"}),
    (("set_up", "plug", 9, 7), ("link", "set"), {"index": 9, "master": 7, "state": "up"}),
    (
        ("add_address", "v4", 2, ipaddress.ip_interface("10.1.2.3/24")),
        ("addr", "add"),
        {"index": 2, "address": "10.1.2.3", "prefixlen": 24, "family": socket.AF_INET},
    ),
    (
        ("add_address", "v6", 2, ipaddress.ip_interface("fd00:1::3/64")),
        ("addr", "add"),
        {"index": 2, "address": "fd00:1::3", "prefixlen": 64, "family": socket.AF_INET6, "flags": 2},
    ),
    (
        ("add_default_route", ipaddress.ip_address("10.1.2.1")),
        ("route", "add"),
        {"dst": "0.0.0.0/0", "gateway": "10.1.2.1", "family": socket.AF_INET},
    ),
    (
        ("add_default_route", ipaddress.ip_address("fd00:1::1")),
        ("route", "add"),
        {"dst": "::/0", "gateway": "fd00:1::1", "family": socket.AF_INET6},
    ),
    (
        ("forget_neighbour", "10.1.2.3", 7),
        ("neigh", "del"),
        {"dst": "10.1.2.3", "ifindex": 7, "family": socket.AF_INET},
    ),
]


@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"), CASES, ids=[c[0][0] + str(i) for i, c in enumerate(CASES)]
)
def test_each_request_is_what_pyroute2_would_send(ours: tuple, theirs: tuple, kwargs: dict) -> None:
    assert _without_sequence(_ours(*ours)) == _without_sequence(_pyroute2(*theirs, **kwargs))


def test_a_batch_reads_every_answer_and_names_the_request_that_failed() -> None:
    missing = 2**31 - 7  # no interface has this index
    batch = NetlinkBatch()
    batch.set_up("bring lo up", 1)  # succeeds (lo is up already)
    batch.delete_link("delete a link that is not there", missing)  # ENODEV: tolerated
    batch.set_up("bring up a link that is not there", missing)  # ENODEV: the failure
    batch.forget_neighbour("192.0.2.77", 1)  # ENOENT: tolerated
    assert len(batch) == 4
    with host_socket() as sock:
        with pytest.raises(NetlinkError) as failed:
            batch.send(sock)
        assert failed.value.errno == errno.ENODEV
        assert "bring up a link that is not there" in str(failed.value)
        # Every answer was read: the socket has nothing left for the next batch.
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(65536)
    assert len(batch) == 0 and os.getuid() == 0


def test_a_link_kind_the_kernel_lacks_is_a_failed_precondition_naming_the_module() -> None:
    """What a node without its kernel's modules answers for a bridge (EOPNOTSUPP), provoked on this
    kernel with a link kind no module provides."""
    from pyroute2.netlink.rtnl import RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    from calyx_base.errors import FailedPrecondition
    from sandbox.bridge import links

    batch = NetlinkBatch()
    kind = ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "calyx-no-such-kind")]})
    batch._add(
        "create link cxnokind0", ifinfmsg(), RTM_NEWLINK, CREATE, {}, [("IFLA_IFNAME", "cxnokind0"), kind]
    )
    with pytest.raises(FailedPrecondition) as err:
        links._send(batch, "cannot create bridge cxnokind0")
    assert "cannot create bridge cxnokind0" in str(err.value) and "module" in str(err.value)
    assert not os.path.exists("/sys/class/net/cxnokind0")
