"""The built-in network's dual-stack pieces on their own: which subnets a pod gets (kubelet's order,
IPv6 alone, the config's pair), IPv4 and IPv6 leases side by side, and which family a hostPort maps to.
(The kernel side is in tests/e2e/test_network_ipv6.py.)"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from calyx_base.errors import FailedPrecondition
from cri.store import Store
from sandbox.bridge.ipam import IPAM
from sandbox.bridge.iptables import _dnat_rule
from sandbox.bridge.network import BridgeNetwork


def _subnets(short_tmp: Path, pod_cidr: str, subnet_v6: str = "") -> list[str]:
    store = Store(short_tmp / "db")
    try:
        network = BridgeNetwork("cxu0", "10.88.0.0/16", store, lambda: pod_cidr, subnet_v6)
        return [str(s) for s in network.subnets()]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("pod_cidr", "subnet_v6", "expected"),
    [
        ("", "", ["10.88.0.0/16"]),
        ("", "fd00:10:88::/64", ["10.88.0.0/16", "fd00:10:88::/64"]),
        ("10.1.0.0/24,fd00:1::/64", "fd00:10:88::/64", ["10.1.0.0/24", "fd00:1::/64"]),
        (" fd00:1::/64 , 10.1.0.0/24", "", ["fd00:1::/64", "10.1.0.0/24"]),  # kubelet's order
        ("fd00:1::/64", "", ["fd00:1::/64"]),  # IPv6 only
        ("10.1.0.0/24,10.2.0.0/24", "", ["10.1.0.0/24"]),  # the first of a family
    ],
)
def test_subnets_follow_the_pod_cidr_in_its_order_else_the_config(
    short_tmp: Path, pod_cidr: str, subnet_v6: str, expected: list[str]
) -> None:
    assert _subnets(short_tmp, pod_cidr, subnet_v6) == expected


@pytest.mark.parametrize("pod_cidr", ["fd00:1::/127", "10.1.0.0/31"])
def test_a_subnet_without_room_for_pods_is_failed_precondition(short_tmp: Path, pod_cidr: str) -> None:
    with pytest.raises(FailedPrecondition, match="no room for pods"):
        _subnets(short_tmp, pod_cidr)


def test_ipv4_and_ipv6_leases_of_a_pod_live_side_by_side_and_go_together(short_tmp: Path) -> None:
    store = Store(short_tmp / "db")
    ipam = IPAM(store)
    v4, v6 = ipaddress.ip_network("10.9.0.0/29"), ipaddress.ip_network("fd00:9::/64")
    a4, a6 = ipam.allocate(v4, "pod0", "br"), ipam.allocate(v6, "pod0", "br")
    assert (str(a4), str(a6)) == ("10.9.0.2/29", "fd00:9::2/64")  # ::1 is the gateway
    assert ipam.allocate(v6, "pod0", "br") == a6  # the same pod keeps its address
    assert str(ipam.allocate(v6, "pod1", "br")) == "fd00:9::3/64"
    assert ipam.families_of("pod0") == {4, 6}
    assert sorted(ipam.release("pod0")) == ["10.9.0.2", "fd00:9::2"]
    assert ipam.families_of("pod0") == set()
    assert str(ipam.allocate(v6, "pod2", "br")) == "fd00:9::2/64"  # released, reused
    store.close()


@pytest.mark.parametrize(
    ("host_ip", "v4", "v6"),
    [
        ("", True, True),
        ("0.0.0.0", True, False),
        ("192.0.2.7", True, False),
        ("::", False, True),
        ("2001:db8::7", False, True),
    ],
)
def test_a_host_port_maps_to_the_family_of_its_host_ip(host_ip: str, v4: bool, v6: bool) -> None:
    mapping = {"host_port": 8080, "container_port": 80, "protocol": "tcp", "host_ip": host_ip}
    rule4, rule6 = _dnat_rule(4, "10.9.0.2", mapping), _dnat_rule(6, "fd00:9::2", mapping)
    assert (rule4 is not None, rule6 is not None) == (v4, v6)
    if rule6 is not None:
        assert rule6.endswith("--to-destination [fd00:9::2]:80")
        assert ("-d 2001:db8::7" in rule6) == (host_ip == "2001:db8::7")  # "::" means any address
