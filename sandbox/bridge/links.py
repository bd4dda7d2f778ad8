"""Kernel links of the built-in network: the bridge, and each pod's veth pair.

A pod's pair is made by one netlink request: the host end plugged into the bridge and up, the pod end
created directly inside the pod's pinned netns as ``eth0`` (moving an interface between namespaces
afterwards costs 10-25 ms of the kernel's time here; creating it there costs nothing extra). Inside
the pod, its addresses, links and default routes are one batch of requests over a netlink socket
opened in the netns (sandbox.netns). Teardown deletes the host end (the pod end goes with it) and the
host's neighbour entries for the pod's addresses, which the next pod given the same address would
otherwise find pointing at a MAC address that is gone, in one batch. Names derive from the pod id, so
teardown and recovery find them without stored state; presence is read from sysfs, without netlink.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from pathlib import Path

from calyx_base.errors import FailedPrecondition, Internal
from sandbox.bridge.ipam import Interface
from sandbox.bridge.nlbatch import Address, NetlinkBatch, NetlinkError, addresses_of, host_socket
from sandbox.netns import call_in

POD_IFNAME = "eth0"
IFF_UP = 0x1


def veth_names(pod_id: str) -> tuple[str, str]:
    """(host end, the pod end's temporary host name of earlier versions); both fit IFNAMSIZ."""
    return f"cxv{pod_id[:12]}", f"cxe{pod_id[:12]}"


def ifindex(name: str) -> int | None:
    """The host interface's index from sysfs; None when there is no such interface."""
    try:
        return int(Path("/sys/class/net", name, "ifindex").read_text())
    except (OSError, ValueError):
        return None


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def is_up(name: str) -> bool:
    try:
        return bool(int(Path("/sys/class/net", name, "flags").read_text(), 16) & IFF_UP)
    except (OSError, ValueError):
        return False


def missing_gateways(name: str, gateways: list[Interface]) -> list[Interface]:
    """The gateway addresses the bridge lacks (all of them when it does not exist): one dump."""
    index = ifindex(name)
    if index is None:
        return list(gateways)
    with host_socket() as sock:
        have = addresses_of(sock, index)
    return [g for g in gateways if (str(g.ip), g.network.prefixlen) not in have]


def bridge_mac(name: str) -> str:
    """The bridge's own MAC address, derived from its name (locally administered, unicast). A bridge
    given none takes its ports' lowest, which changes as pods come and go, and a bridge made again by a
    repair would get another: either way the pods' ARP entries for their gateway would go stale."""
    digest = hashlib.sha256(f"calyx bridge {name}".encode()).digest()
    first = (digest[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in (first, *digest[1:6]))


def ensure_bridge(name: str, gateways: list[Interface]) -> tuple[int, bool]:
    """Create the bridge if missing, give it the gateway addresses it lacks (one per subnet), bring it
    up; returns its index and whether it was created."""
    created = ifindex(name) is None
    if created:
        batch = NetlinkBatch()
        batch.create_bridge(name, bridge_mac(name))
        _send(batch, f"cannot create bridge {name}")
    index = ifindex(name)
    if index is None:
        raise Internal(f"bridge {name} vanished right after creation")
    batch = NetlinkBatch()
    for gateway in missing_gateways(name, gateways):
        batch.add_address(f"add {gateway} to {name}", index, gateway)
    batch.set_up(f"bring {name} up", index)
    _send(batch, f"cannot set up bridge {name}")
    return index, created


def _send(batch: NetlinkBatch, failure: str, object_id: str | None = None) -> None:
    """Send ``batch`` over a host socket; a failure is Internal, quoting the request that failed, except
    a link kind the kernel lacks (EOPNOTSUPP: the bridge or veth module is not there, as on a node image
    without its kernel's /lib/modules): that is the node's state, FailedPrecondition saying so."""
    with host_socket() as sock:
        try:
            batch.send(sock)
        except NetlinkError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                raise FailedPrecondition(
                    f"{failure}: {exc}: the kernel lacks this link type (is its module, e.g. bridge or"
                    " veth, in /lib/modules/$(uname -r)?)",
                    object_id,
                ) from None
            raise Internal(f"{failure}: {exc}", object_id) from None


def bridge_ports(name: str) -> list[str]:
    """Names of the interfaces plugged into bridge ``name`` (empty when it has none or does not exist)."""
    brif = Path("/sys/class/net", name, "brif")
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def delete_link(name: str) -> bool:
    index = ifindex(name)
    if index is None:
        return False
    batch = NetlinkBatch()
    batch.delete_link(f"delete {name}", index)
    _send(batch, f"cannot delete {name}")
    return True


def plug(bridge_index: int, pod_ids: list[str]) -> list[str]:
    """Plug the host ends of these pods' veths (those that exist) into the bridge again, after the
    bridge was made anew; returns their names."""
    names = [n for n in (veth_names(p)[0] for p in pod_ids) if link_exists(n)]
    if not names:
        return []
    batch = NetlinkBatch()
    for name in names:
        index = ifindex(name)
        if index is not None:
            batch.set_up(f"plug {name}", index, master=bridge_index)
    _send(batch, "cannot plug pods into the bridge again")
    for name in names:
        _hairpin(name)
    return names


def _hairpin(host_name: str) -> None:
    """With br_netfilter, a pod's packet to its own hostPort is DNATed back to it and bridged out of
    the port it came in on, which a bridge port only does in hairpin mode."""
    Path(f"/sys/class/net/{host_name}/brport/hairpin_mode").write_text("1")


def attach_pod(
    bridge_index: int, netns: Path, pod_id: str, addresses: list[tuple[Interface, Address]]
) -> str:
    """Create the pod's veth pair (host end on the bridge, ``eth0`` in the netns) and configure
    ``eth0`` with each (address, default gateway) pair, one per IP family of the pod: two batches of
    requests. Returns the host end's name."""
    host_name, temp_name = veth_names(pod_id)
    batch = NetlinkBatch()
    for stale in (host_name, temp_name):  # left from an interrupted attempt: its pod end goes with it
        index = ifindex(stale)
        if index is not None:
            batch.delete_link(f"delete the stale {stale}", index)
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)  # the pin; FileNotFoundError when it is gone
    try:
        what = f"create the veth pair {host_name}/{POD_IFNAME} of pod {pod_id}"
        batch.create_veth(what, host_name, bridge_index, POD_IFNAME, fd)
        _send(batch, "cannot create the pod's veth pair", pod_id)
    finally:
        os.close(fd)
    _hairpin(host_name)
    sock, eth0, lo = call_in(str(netns), _pod_side)
    try:
        batch = NetlinkBatch()
        for address, _ in addresses:
            batch.add_address(f"add {address} to {POD_IFNAME} of pod {pod_id}", eth0, address)
        batch.set_up(f"bring {POD_IFNAME} up", eth0)
        batch.set_up("bring lo up", lo)
        for _, gateway in addresses:
            batch.add_default_route(gateway)
        batch.send(sock)
    except NetlinkError as exc:
        raise Internal(f"cannot configure {POD_IFNAME} in the pod's netns {netns}: {exc}", pod_id) from None
    finally:
        sock.close()
    return host_name


def _pod_side() -> tuple[socket.socket, int, int]:
    """Run inside the pod's netns: refuse router advertisements on eth0 (before it is up) and open the
    netlink socket the pod's batch goes through; returns it with the indexes of eth0 and lo.

    accept_ra=0: the pod's IPv6 addresses and routes come from Calyx only. Otherwise any pod on the
    bridge that may send raw packets could advertise itself as an IPv6 router to the others (IPv4-only
    pods too, IPv6 being on in every netns) and take their traffic, the flaw of CVE-2020-10749."""
    if Path("/proc/sys/net/ipv6").is_dir():  # a kernel without IPv6 has nothing to refuse
        Path(f"/proc/sys/net/ipv6/conf/{POD_IFNAME}/accept_ra").write_text("0")
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        return sock, socket.if_nametoindex(POD_IFNAME), socket.if_nametoindex("lo")
    except OSError:
        sock.close()
        raise


def detach_pod(pod_id: str, bridge: str, ips: list[str]) -> None:
    """Delete the pod's veth pair and forget the host's neighbour entries for ``ips`` on the bridge,
    in one batch; nothing when none of it is there."""
    batch = NetlinkBatch()
    for name in veth_names(pod_id):
        index = ifindex(name)
        if index is not None:
            batch.delete_link(f"delete {name}", index)
    bridge_index = ifindex(bridge)
    if bridge_index is not None:
        for ip in ips:
            batch.forget_neighbour(ip, bridge_index)
    if len(batch):
        _send(batch, "cannot remove the pod's veth pair", pod_id)


def set_sysctl(path: str, value: str) -> None:
    """A host sysctl under /proc/sys (the daemon runs in the host's namespaces)."""
    Path("/proc/sys", path).write_text(value)


def sysctl(path: str) -> str:
    try:
        return Path("/proc/sys", path).read_text().strip()
    except OSError:
        return ""
