"""Attach and detach pods on the built-in network; its shared parts are made once and kept.

Attach: lease an address in each subnet (one per IP family: dual-stack when kubelet's pod CIDR or
network.subnet_v6 has an IPv6 part), make sure of the network's shared parts (sandbox/bridge/shared.py:
a cheap look for every pod, the full check only the first time and when the look finds something gone),
plug a veth into the pod's netns, add the pod's hostPort rules. Detach undoes the pod's own part and is
idempotent: every name derives from the pod id, so it also cleans up after an attach that a crash
interrupted half-way. The shared parts stay when the last pod goes (made again for the next pod they
would cost more than all its own work); they are checked and repaired at every start (``recover``),
and removed only by ``calyx cleanup`` (``cleanup_network``).

The store records, per bridge, the subnets its shared parts were made for (kind ``bridge_network``),
before they are made: a start after a crash finds them, and cleanup knows the network was there.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from calyx_base import failpoints
from calyx_base.errors import CommandFailed, FailedPrecondition
from sandbox.bridge import links, shaping
from sandbox.bridge.ipam import IPAM, Network, Records, gateway_of
from sandbox.bridge.iptables import BridgeRules, Ruleset, host_port_rules
from sandbox.bridge.shared import SharedParts

log = logging.getLogger("sandbox.bridge")

NETWORK_KIND = "bridge_network"


def ipv6_enabled() -> bool:
    """Whether the host's kernel gives interfaces IPv6 addresses (new namespaces inherit nothing else
    that matters here: disable_ipv6 is 0 in a fresh netns)."""
    flag = Path("/proc/sys/net/ipv6/conf/all/disable_ipv6")
    return flag.exists() and flag.read_text().strip() == "0"


def _warn_unmapped(pod_id: str, families: set[int], port_mappings: list[dict[str, Any]]) -> None:
    """A hostPort bound to a host_ip of a family the pod has no address in cannot be mapped: say so."""
    for m in port_mappings:
        host_ip = m.get("host_ip") or ""
        if m.get("host_port") and host_ip and ipaddress.ip_address(host_ip).version not in families:
            log.warning(
                "hostPort skipped: the pod has no address of its host_ip's IP family",
                extra={"pod_id": pod_id, "host_ip": host_ip, "host_port": m["host_port"]},
            )


def _networks(subnets: set[str]) -> list[Network]:
    return [ipaddress.ip_network(s) for s in sorted(subnets)]


class BridgeNetwork:
    def __init__(
        self, bridge: str, subnet: str, store: Records, pod_cidr: Callable[[], str], subnet_v6: str = ""
    ) -> None:
        self.bridge = bridge
        self.default_subnets = [subnet, *([subnet_v6] if subnet_v6 else [])]
        self.store = store
        self.ipam = IPAM(store)
        self.shared = SharedParts(bridge)
        self._pod_cidr = pod_cidr
        self._lock = threading.Lock()  # one check or repair of the shared parts at a time
        # Subnets of the configured bridge whose shared parts this process has checked whole.
        self._checked: set[str] = set()
        # Live pods with hostPorts: (addresses, port mappings), to make their rules again in a repair.
        self._host_ports: dict[str, tuple[list[str], list[dict[str, Any]]]] = {}

    def subnets(self) -> list[Network]:
        """The subnets a new pod gets an address in, at most one per IP family, in kubelet's order (the
        first is the pod's primary IP): the pod CIDR kubelet set (e.g. "10.88.0.0/16,fd00:10:88::/64",
        or IPv6 only), else network.subnet and network.subnet_v6."""
        parts = [p.strip() for p in self._pod_cidr().split(",") if p.strip()] or self.default_subnets
        chosen: dict[int, Network] = {}
        for part in parts:
            network = ipaddress.ip_network(part, strict=False)
            if network.num_addresses < 4:
                raise FailedPrecondition(
                    f"pod network {part!r} has no room for pods (needs /30, /126 or larger)"
                )
            chosen.setdefault(network.version, network)
        if 6 in chosen and not ipv6_enabled():
            raise FailedPrecondition(
                f"pod network {chosen[6]} is IPv6 but IPv6 is disabled on this host"
                " (net.ipv6.conf.all.disable_ipv6 = 1 or no IPv6 support in the kernel)"
            )
        return list(chosen.values())

    # --- shared parts ---------------------------------------------------------------------------------

    def _recorded(self, bridge: str) -> set[str]:
        return set((self.store.get(NETWORK_KIND, bridge) or {}).get("subnets", []))

    def _record(self, bridge: str, subnets: set[str]) -> None:
        if self._recorded(bridge) != subnets:
            self.store.put(NETWORK_KIND, bridge, {"subnets": sorted(subnets)})

    def _pods_on(self, bridge: str) -> list[str]:
        leases = self.ipam.leases().values()
        return sorted({str(lease["pod_id"]) for lease in leases if lease.get("bridge") == bridge})

    def _ensure_shared(self, subnets: list[Network], check_all: bool = False) -> int:
        """The bridge's index, once the shared parts a pod in ``subnets`` needs are there: a cheap look
        when this process has checked them before, the full check (and repair) the first time, when the
        look finds something gone, or with ``check_all``."""
        wanted = {str(s) for s in subnets}
        with self._lock:
            index = links.ifindex(self.bridge)
            if (
                not check_all
                and index is not None
                and wanted <= self._checked
                and self.shared.intact(_networks(self._checked))
            ):
                return index
            every = self._recorded(self.bridge) | self._checked | wanted
            self._record(self.bridge, every)  # before it is made: a crash meanwhile is repaired at start
            repair = self.shared.ensure(_networks(every))
            index = links.ifindex(self.bridge)
            if index is None:
                raise FailedPrecondition(f"bridge {self.bridge} vanished while it was being set up")
            if repair.bridge_created:
                plugged = links.plug(index, self._pods_on(self.bridge))
                if plugged:
                    log.warning("pods plugged into the bridge made anew", extra={"veths": ",".join(plugged)})
            self._repair_host_ports(self.bridge, repair.saved, dict(self._host_ports))
            self._checked = every
            return index

    def _repair_host_ports(
        self,
        bridge: str,
        saved: dict[int, Ruleset],
        pods: dict[str, tuple[list[str], list[dict[str, Any]]]],
    ) -> None:
        """Make again the hostPort rules of live pods that ``saved`` (the rules as a repair found them)
        lacks: a flushed ruleset loses the pods' chains with the network's."""
        for pod_id, (ips, mappings) in pods.items():
            for ip in ips:
                version = ipaddress.ip_address(ip).version
                if version not in saved or not host_port_rules(version, ip, mappings):
                    continue
                rules = BridgeRules(bridge, version)
                filled, jumped = rules.pod_intact(saved[version], pod_id)
                if not (filled and jumped):
                    rules.add_pod(pod_id, ip, mappings, jump=not jumped)
                    log.warning("hostPort rules of a pod made again", extra={"pod_id": pod_id, "ip": ip})

    # --- pods -----------------------------------------------------------------------------------------

    def attach(
        self,
        pod_id: str,
        netns: Path,
        port_mappings: list[dict[str, Any]],
        bandwidth: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Connect the pod, with an address in each subnet; returns the record detach needs (bridge,
        addresses, gateways, ports). ``bandwidth`` is the CNI-style capability
        (sandbox/cni/bandwidth.py), applied with tc."""
        start = time.monotonic()
        subnets = self.subnets()
        gateways = [gateway_of(subnet) for subnet in subnets]
        addresses = [self.ipam.allocate(subnet, pod_id, self.bridge) for subnet in subnets]
        index = self._ensure_shared(subnets)
        pairs = [(address, gateway.ip) for address, gateway in zip(addresses, gateways, strict=True)]
        host_veth = links.attach_pod(index, netns, pod_id, pairs)
        failpoints.hit("bridge.after_veth", pod_id=pod_id)
        if bandwidth:
            shaping.apply(host_veth, netns, bandwidth, pod_id)
        for address in addresses:
            rules = BridgeRules(self.bridge, address.version)
            try:
                rules.add_pod(pod_id, str(address.ip), port_mappings)
            except CommandFailed:
                # The network's hostPort chain may be gone (a firewall reload): check, repair, try again.
                self._ensure_shared(subnets, check_all=True)
                rules.add_pod(pod_id, str(address.ip), port_mappings)
        if any(m.get("host_port") for m in port_mappings):
            self._host_ports[pod_id] = ([str(a.ip) for a in addresses], port_mappings)
        _warn_unmapped(pod_id, {a.version for a in addresses}, port_mappings)
        log.info(
            "pod attached",
            extra={
                "pod_id": pod_id,
                "bridge": self.bridge,
                "ip": ",".join(str(a) for a in addresses),
                "duration_ms": (time.monotonic() - start) * 1000,
            },
        )
        return {
            "kind": "bridge",
            "bridge": self.bridge,
            # The first family's address, gateway and subnet (what records before dual-stack held) ...
            "address": str(addresses[0]),
            "gateway": str(gateways[0].ip),
            "subnet": str(subnets[0]),
            # ... and every family's, in kubelet's order.
            "addresses": [str(a) for a in addresses],
            "port_mappings": port_mappings,
        }

    def detach(
        self, pod_id: str, bridge: str | None = None, port_mappings: list[dict[str, Any]] | None = None
    ) -> None:
        """Remove the pod's hostPort rules, veth and lease; the network's shared parts stay. With
        ``port_mappings`` known, a family without hostPorts costs no iptables call; unknown (None), the
        rules are looked up."""
        start = time.monotonic()
        bridge = bridge or self.bridge
        leased = self.ipam.of_pod(pod_id)
        # The families the pod holds leases in: rules are added after the leases and removed before
        # their release, so a pod without leases has no rules left.
        removals = [
            (ipaddress.ip_address(ip).version, port_mappings is not None)
            for ip in leased
            if port_mappings is None or host_port_rules(ipaddress.ip_address(ip).version, ip, port_mappings)
        ]
        if removals or pod_id in self._host_ports:
            with self._lock:  # not while a repair makes the live pods' hostPort rules again
                self._host_ports.pop(pod_id, None)
                for version, known in removals:
                    BridgeRules(bridge, version).remove_pod(pod_id, known=known)
        links.detach_pod(pod_id, bridge, leased)
        self.ipam.release(pod_id)
        log.info(
            "pod detached",
            extra={"pod_id": pod_id, "bridge": bridge, "duration_ms": (time.monotonic() - start) * 1000},
        )

    def stale_leases(self, live: set[str] | dict[str, Any]) -> list[tuple[str, str]]:
        """Recovery: (pod id, bridge) of the leases of pods that are not live (crashed mid-run or
        mid-stop), each for ``detach`` (which looks their hostPort rules up: their port mappings are
        not known here)."""
        stale = []
        for lease in list(self.ipam.leases().values()):
            pod_id = str(lease.get("pod_id", ""))
            if pod_id and pod_id not in live:
                stale.append((pod_id, str(lease.get("bridge") or self.bridge)))
        return stale

    def recover(self, live: dict[str, list[dict[str, Any]]]) -> None:
        """At start, once the leases of pods that are gone are released (``stale_leases``), given the
        live pods and their port mappings: check the shared parts of each network that has live pods,
        and of the configured one if it was set up, repairing what is missing (one iptables-save per
        family, a restore only if needed), the live pods' hostPort rules included. The shared parts are
        kept, pods or not."""
        subnets: dict[str, set[str]] = {}
        if self._recorded(self.bridge):
            subnets[self.bridge] = self._recorded(self.bridge)
        host_ports: dict[str, dict[str, tuple[list[str], list[dict[str, Any]]]]] = {}  # by bridge
        for ip, lease in self.ipam.leases().items():
            pod_id, bridge = str(lease.get("pod_id", "")), str(lease.get("bridge") or self.bridge)
            if pod_id not in live:
                continue
            recorded = self._recorded(bridge) if bridge not in subnets else set()
            subnets.setdefault(bridge, recorded).add(str(lease.get("subnet", "")))
            if any(m.get("host_port") for m in live[pod_id]):
                pod = host_ports.setdefault(bridge, {}).setdefault(pod_id, ([], live[pod_id]))
                pod[0].append(ip)
        for bridge, nets in subnets.items():
            nets.discard("")
            with self._lock:
                self._record(bridge, nets)
                repair = SharedParts(bridge).ensure(_networks(nets))
                index = links.ifindex(bridge)
                if repair.bridge_created and index is not None:
                    links.plug(index, [p for p in self._pods_on(bridge) if p in live])
                self._repair_host_ports(bridge, repair.saved, host_ports.get(bridge, {}))
                if bridge == self.bridge:
                    self._checked = nets
                    self._host_ports = dict(host_ports.get(bridge, {}))


def cleanup_network(bridge: str, store: Records | None, force: bool = False) -> list[str]:
    """``calyx cleanup``: remove the shared parts of the built-in network on ``bridge`` (its chains in
    iptables and ip6tables, the chains of its pods' hostPorts, the bridge) and their record. Refused
    while pods hold addresses on it (``store``'s leases) or interfaces are plugged into it, unless
    ``force``. Returns what was removed. Host-wide sysctls (ip_forward) are left as they are."""
    leases = IPAM(store).leases().values() if store is not None else []
    users = sorted({str(lease.get("pod_id")) for lease in leases if lease.get("bridge") == bridge})
    ports = links.bridge_ports(bridge)
    if (users or ports) and not force:
        what = [f"pods {', '.join(users)}"] if users else []
        what += [f"interfaces {', '.join(ports)}"] if ports else []
        raise FailedPrecondition(
            f"the built-in network on bridge {bridge} is in use ({'; '.join(what)}): remove those pods"
            " first, or pass --force to cut them off"
        )
    removed = SharedParts(bridge).remove()
    if store is not None:
        store.delete(NETWORK_KIND, bridge)
    return removed
