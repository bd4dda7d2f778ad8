"""Attach and detach pods on the built-in network.

Attach: lease an address in each subnet (one per IP family: dual-stack when kubelet's pod CIDR or
network.subnet_v6 has an IPv6 part), make sure the bridge, its gateway addresses and the chains of each
family (iptables, ip6tables) exist, plug a veth into the pod's netns, add the pod's hostPort rules.
Detach undoes it in reverse and is idempotent: every name derives from the pod id, so it also cleans up
after an attach that a crash interrupted half-way. The network (bridge and chains) goes with its last
pod. One lock serialises attach/detach, so the last pod leaving cannot remove chains a new pod is about
to use.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cri import failpoints
from cri.errors import FailedPrecondition
from cri.store import Store
from sandbox.bridge import links, shaping
from sandbox.bridge.ipam import IPAM, Network, gateway_of
from sandbox.bridge.iptables import BridgeRules

log = logging.getLogger("sandbox.bridge")


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


class BridgeNetwork:
    def __init__(
        self, bridge: str, subnet: str, store: Store, pod_cidr: Callable[[], str], subnet_v6: str = ""
    ) -> None:
        self.bridge = bridge
        self.default_subnets = [subnet, *([subnet_v6] if subnet_v6 else [])]
        self.ipam = IPAM(store)
        self._pod_cidr = pod_cidr
        self._lock = threading.Lock()
        # (bridge, subnet) whose chains this process made sure of; cleared when they are removed, so a
        # pod run costs one iptables call instead of a dozen. (Rules flushed by someone else come back
        # at the daemon's next start.)
        self._ensured: set[tuple[str, str]] = set()

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
        with self._lock:
            addresses = [self.ipam.allocate(subnet, pod_id, self.bridge) for subnet in subnets]
            links.ensure_bridge(self.bridge, gateways)
            self._forwarding(subnets)
            for subnet in subnets:
                if (self.bridge, str(subnet)) not in self._ensured:
                    BridgeRules(self.bridge, subnet.version).ensure_network(subnet)
                    self._ensured.add((self.bridge, str(subnet)))
            pairs = [(address, gateway.ip) for address, gateway in zip(addresses, gateways, strict=True)]
            host_veth = links.attach_pod(self.bridge, netns, pod_id, pairs)
            failpoints.hit("bridge.after_veth", pod_id=pod_id)
            if bandwidth:
                shaping.apply(host_veth, netns, bandwidth, pod_id)
            for address in addresses:
                BridgeRules(self.bridge, address.version).add_pod(pod_id, str(address.ip), port_mappings)
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

    def _forwarding(self, subnets: list[Network]) -> None:
        """Host sysctls the families need. IPv6 forwarding is host-wide (``all``): note that a host
        interface with accept_ra=1 then stops taking router advertisements (kubelet's CNI bridge plugin
        does the same)."""
        for subnet in subnets:
            if subnet.version == 4:
                links.set_sysctl("net/ipv4/ip_forward", "1")
                links.set_sysctl(f"net/ipv4/conf/{self.bridge}/route_localnet", "1")
            else:
                links.set_sysctl("net/ipv6/conf/all/forwarding", "1")

    def detach(self, pod_id: str, bridge: str | None = None) -> None:
        """Remove the pod's rules, veth and lease; the network's chains go with its last pod."""
        bridge = bridge or self.bridge
        with self._lock:
            # The families the pod holds leases in; both when none is left (a detach retried after a
            # crash between the rules and the release), so no rule can stay behind.
            for version in sorted(self.ipam.families_of(pod_id) or {4, 6}):
                BridgeRules(bridge, version).remove_pod(pod_id)
            links.detach_pod(pod_id)
            self.ipam.release(pod_id)
            if bridge not in self.ipam.bridges_in_use():
                self._remove_network(bridge)
        log.info("pod detached", extra={"pod_id": pod_id, "bridge": bridge})

    def stale_leases(self, live: set[str]) -> list[tuple[str, str]]:
        """Recovery: (pod id, bridge) of the leases of pods that are not live (crashed mid-run or
        mid-stop), each for ``detach``."""
        stale = []
        for lease in list(self.ipam.leases().values()):
            pod_id = str(lease.get("pod_id", ""))
            if pod_id and pod_id not in live:
                stale.append((pod_id, str(lease.get("bridge") or self.bridge)))
        return stale

    def remove_if_unused(self) -> None:
        """Recovery: the network of a node without pods on it goes (see _remove_network)."""
        with self._lock:
            if self.bridge not in self.ipam.bridges_in_use():
                self._remove_network(self.bridge)

    def _remove_network(self, bridge: str) -> None:
        """The last pod of ``bridge`` is gone: its chains and the bridge itself go too (made again, in a
        few milliseconds, for the next pod), so a node without pods carries nothing of Calyx's.

        Not while other interfaces are still plugged in: then someone else (another Calyx configured
        with the same bridge, by mistake) still uses the network, and pulling it would cut them off."""
        ports = links.bridge_ports(bridge)
        if ports:
            log.warning(
                "bridge still has ports; keeping the network", extra={"bridge": bridge, "ports": ports}
            )
            return
        for version in (4, 6):
            BridgeRules(bridge, version).remove_network()
        links.delete_link(bridge)
        self._ensured = {e for e in self._ensured if e[0] != bridge}
