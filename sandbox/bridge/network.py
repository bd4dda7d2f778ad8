"""Attach and detach pods on the built-in network.

Attach: lease an address, make sure the bridge and its chains exist, plug a veth into the pod's netns,
add the pod's hostPort rules. Detach undoes it in reverse and is idempotent: every name derives from the
pod id, so it also cleans up after an attach that a crash interrupted half-way. The network (bridge and
chains) goes with its last pod. One lock serialises
attach/detach, so the last pod leaving cannot remove chains a new pod is about to use.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cri.errors import FailedPrecondition
from cri.store import Store
from sandbox.bridge import links, shaping
from sandbox.bridge.ipam import IPAM, gateway_of
from sandbox.bridge.iptables import BridgeRules

log = logging.getLogger("sandbox.bridge")


class BridgeNetwork:
    def __init__(self, bridge: str, subnet: str, store: Store, pod_cidr: Callable[[], str]) -> None:
        self.bridge = bridge
        self.default_subnet = subnet
        self.ipam = IPAM(store)
        self._pod_cidr = pod_cidr
        self._lock = threading.Lock()
        # (bridge, subnet) whose chains this process made sure of; cleared when they are removed, so a
        # pod run costs one iptables call instead of a dozen. (Rules flushed by someone else come back
        # at the daemon's next start.)
        self._ensured: set[tuple[str, str]] = set()

    def subnet(self) -> ipaddress.IPv4Network:
        """The pod CIDR kubelet set (its IPv4 part), else the configured subnet."""
        for part in self._pod_cidr().split(","):
            part = part.strip()
            if part:
                network = ipaddress.ip_network(part, strict=False)
                if isinstance(network, ipaddress.IPv4Network):
                    return network
        network = ipaddress.ip_network(self.default_subnet, strict=False)
        if not isinstance(network, ipaddress.IPv4Network):
            raise FailedPrecondition(f"network.subnet {self.default_subnet!r} is not an IPv4 network")
        return network

    def attach(
        self,
        pod_id: str,
        netns: Path,
        port_mappings: list[dict[str, Any]],
        bandwidth: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Connect the pod; returns the record detach needs (bridge, address, gateway, ports).
        ``bandwidth`` is the CNI-style capability (sandbox/cni/bandwidth.py), applied with tc."""
        start = time.monotonic()
        subnet = self.subnet()
        gateway = gateway_of(subnet)
        with self._lock:
            address = self.ipam.allocate(subnet, pod_id, self.bridge)
            links.ensure_bridge(self.bridge, gateway)
            links.set_sysctl("net/ipv4/ip_forward", "1")
            links.set_sysctl(f"net/ipv4/conf/{self.bridge}/route_localnet", "1")
            rules = BridgeRules(self.bridge)
            if (self.bridge, str(subnet)) not in self._ensured:
                rules.ensure_network(subnet)
                self._ensured.add((self.bridge, str(subnet)))
            host_veth = links.attach_pod(self.bridge, netns, pod_id, address, gateway.ip)
            if bandwidth:
                shaping.apply(host_veth, netns, bandwidth, pod_id)
            rules.add_pod(pod_id, str(address.ip), port_mappings)
        log.info(
            "pod attached",
            extra={
                "pod_id": pod_id,
                "bridge": self.bridge,
                "ip": str(address),
                "duration_ms": (time.monotonic() - start) * 1000,
            },
        )
        return {
            "kind": "bridge",
            "bridge": self.bridge,
            "address": str(address),
            "gateway": str(gateway.ip),
            "subnet": str(subnet),
            "port_mappings": port_mappings,
        }

    def detach(self, pod_id: str, bridge: str | None = None) -> None:
        """Remove the pod's rules, veth and lease; the network's chains go with its last pod."""
        bridge = bridge or self.bridge
        with self._lock:
            rules = BridgeRules(bridge)
            rules.remove_pod(pod_id)
            links.detach_pod(pod_id)
            self.ipam.release(pod_id)
            if bridge not in self.ipam.bridges_in_use():
                self._remove_network(bridge)
        log.info("pod detached", extra={"pod_id": pod_id, "bridge": bridge})

    def release_unknown(self, live: set[str]) -> None:
        """Recovery: leases, veths and chains of pods that are not live (crashed mid-run or mid-stop)."""
        for lease in list(self.ipam.leases().values()):
            pod_id = str(lease.get("pod_id", ""))
            if pod_id and pod_id not in live:
                self.detach(pod_id, str(lease.get("bridge") or self.bridge))
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
        BridgeRules(bridge).remove_network()
        links.delete_link(bridge)
        self._ensured = {e for e in self._ensured if e[0] != bridge}
