"""Kernel links of the built-in network through pyroute2: the bridge and each pod's veth pair.

The pod end is created in the host with a temporary name, moved into the pod's pinned netns and renamed
``eth0`` there. Names derive from the pod id, so teardown and recovery find them without stored state.
Inside the netns pyroute2 speaks over a netlink socket opened there by a thread that joined the pinned
namespace (sandbox.netns.netlink_socket_in): it never creates a namespace that is missing, and costs a
millisecond where ``IPRoute(netns=...)`` forks a helper.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from cri.errors import Internal
from sandbox.bridge.ipam import Interface
from sandbox.netns import call_in, iproute, netlink_socket_in

if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

POD_IFNAME = "eth0"
IFA_F_NODAD = 0x02  # linux/if_addr.h: no duplicate address detection for this address
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _netlink_error() -> type[NetlinkError]:
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError


def veth_names(pod_id: str) -> tuple[str, str]:
    """(host end, temporary pod end); both fit IFNAMSIZ (15 characters)."""
    return f"cxv{pod_id[:12]}", f"cxe{pod_id[:12]}"


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def ensure_bridge(name: str, gateways: list[Interface]) -> int:
    """Create the bridge if missing, give it the gateway addresses (one per IP family), bring it up;
    returns its index."""
    with iproute() as ipr:
        index = _index(ipr, name)
        if index is None:
            try:
                ipr.link("add", ifname=name, kind="bridge")
            except _netlink_error() as exc:
                if exc.code != errno.EEXIST:
                    raise Internal(f"cannot create bridge {name}: {exc}") from None
            index = _index(ipr, name)
            if index is None:
                raise Internal(f"bridge {name} vanished right after creation")
        for gateway in gateways:
            _ensure_address(ipr, index, gateway, name)
        ipr.link("set", index=index, state="up")
        return index


def _ensure_address(ipr: IPRoute, index: int, address: Interface, where: str) -> None:
    """Add ``address`` to the link unless it has it. IPv6 ones skip duplicate address detection
    (``nodad``): the addresses come from our own leases, and DAD would keep them unusable ("tentative")
    for a second or more after the pod starts."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=family)}
    if (str(address.ip), address.network.prefixlen) in have:
        return
    extra = {"flags": IFA_F_NODAD} if address.version == 6 else {}
    try:
        ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen, **extra)
    except _netlink_error() as exc:
        if exc.code != errno.EEXIST:
            raise Internal(f"cannot add {address} to {where}: {exc}") from None


def bridge_ports(name: str) -> list[str]:
    """Names of the interfaces plugged into bridge ``name`` (empty when it has none or does not exist)."""
    if not link_exists(name):
        return []
    with iproute() as ipr:
        index = _index(ipr, name)
        if index is None:
            return []
        return [
            str(link.get_attr("IFLA_IFNAME"))
            for link in ipr.get_links()
            if link.get_attr("IFLA_MASTER") == index
        ]


def link_exists(name: str) -> bool:
    """Whether the host has an interface ``name`` (sysfs: no netlink socket for the common "no")."""
    return Path("/sys/class/net", name).exists()


def delete_link(name: str) -> bool:
    if not link_exists(name):
        return False
    with iproute() as ipr:
        index = _index(ipr, name)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except _netlink_error() as exc:
            if exc.code != errno.ENODEV:
                raise
        return True


def attach_pod(bridge: str, netns: Path, pod_id: str, addresses: list[tuple[Interface, Address]]) -> str:
    """Create the pod's veth pair, plug the host end into ``bridge`` and configure ``eth0`` in the netns
    with each (address, default gateway) pair: one per IP family of the pod."""
    host_name, temp_name = veth_names(pod_id)
    with iproute() as ipr:
        bridge_index = _index(ipr, bridge)
        if bridge_index is None:
            raise Internal(f"bridge {bridge} does not exist", pod_id)
        if _index(ipr, host_name) is not None:  # left from an interrupted attempt
            ipr.link("del", index=_index(ipr, host_name))
        stale = _index(ipr, temp_name)
        if stale is not None:
            ipr.link("del", index=stale)
        ipr.link("add", ifname=host_name, kind="veth", peer=temp_name)
        host_index = _index(ipr, host_name)
        peer_index = _index(ipr, temp_name)
        if host_index is None or peer_index is None:
            raise Internal(f"veth pair {host_name}/{temp_name} was not created", pod_id)
        ipr.link("set", index=peer_index, net_ns_fd=str(netns))
        ipr.link("set", index=host_index, master=bridge_index, state="up")
    # Hairpin: with br_netfilter, a pod's packet to its own hostPort is DNATed back to it and bridged
    # out of the port it came in on, which a bridge port only does in hairpin mode.
    Path(f"/sys/class/net/{host_name}/brport/hairpin_mode").write_text("1")
    sock = netlink_socket_in(str(netns))  # never creates a namespace; ~1 ms against ~30 for netns=
    try:
        _configure_pod_end(sock, netns, pod_id, temp_name, addresses)
    finally:
        sock.close()
    return host_name


def _configure_pod_end(
    sock: socket.socket,
    netns: Path,
    pod_id: str,
    temp_name: str,
    addresses: list[tuple[Interface, Address]],
) -> None:
    with iproute(use_socket=sock) as ns:
        index = _index(ns, temp_name)
        if index is None:
            raise Internal(f"{temp_name} did not arrive in the pod netns {netns}", pod_id)
        ns.link("set", index=index, ifname=POD_IFNAME)
        _refuse_router_advertisements(netns)
        for address, _ in addresses:
            _ensure_address(ns, index, address, f"{POD_IFNAME} of pod {pod_id}")
        ns.link("set", index=index, state="up")
        lo = _index(ns, "lo")
        if lo is not None:
            ns.link("set", index=lo, state="up")
        for address, gateway in addresses:
            if address.version == 6:
                ns.route("add", dst="::/0", gateway=str(gateway), family=socket.AF_INET6)
            else:
                ns.route("add", dst="0.0.0.0/0", gateway=str(gateway))


def _refuse_router_advertisements(netns: Path) -> None:
    """accept_ra=0 on the pod's eth0, before it is up: its IPv6 addresses and routes come from Calyx
    only. Otherwise any pod on the bridge that may send raw packets could advertise itself as an IPv6
    router to the others (IPv4-only pods too, IPv6 being on in every netns) and take their traffic, the
    container-network flaw of CVE-2020-10749."""
    if Path("/proc/sys/net/ipv6").is_dir():  # a kernel without IPv6 has nothing to refuse
        sysctl = Path(f"/proc/sys/net/ipv6/conf/{POD_IFNAME}/accept_ra")
        call_in(str(netns), lambda: sysctl.write_text("0"))


def detach_pod(pod_id: str) -> None:
    """Delete the pod's veth pair (deleting the host end removes the pod end with it)."""
    host_name, temp_name = veth_names(pod_id)
    delete_link(host_name)
    delete_link(temp_name)


def set_sysctl(path: str, value: str) -> None:
    """A host sysctl under /proc/sys (the daemon runs in the host's namespaces)."""
    Path("/proc/sys", path).write_text(value)
