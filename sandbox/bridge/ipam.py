"""Address leases of the built-in network, persisted in the store (kind ``lease``, id = the address).

The store's transaction makes the check-and-take atomic, and a lease outlives a daemon restart, so a
pod keeps its address and no two pods ever get the same one. Leases of pods that no longer exist are
released by recovery. IPv4 and IPv6 leases live side by side (a dual-stack pod holds one of each); the
address's form tells the family.
"""

from __future__ import annotations

import ipaddress
import threading
from contextlib import AbstractContextManager
from typing import Any, Protocol

from calyx_base.errors import ResourceExhausted

KIND = "lease"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class RecordWriter(Protocol):
    """One transaction's writes."""

    def put(self, kind: str, object_id: str, record: dict[str, Any]) -> None: ...

    def delete(self, kind: str, object_id: str) -> None: ...


class Records(Protocol):
    """Where the built-in network keeps its leases and its shared parts' record: the daemon's store
    (cri/store), whose transactions make a check-and-take atomic."""

    def list(self, kind: str) -> dict[str, dict[str, Any]]: ...

    def get(self, kind: str, object_id: str) -> dict[str, Any] | None: ...

    def put(self, kind: str, object_id: str, record: dict[str, Any]) -> None: ...

    def delete(self, kind: str, object_id: str) -> None: ...

    def transaction(self) -> AbstractContextManager[RecordWriter]: ...


def gateway_of(subnet: Network) -> Interface:
    """The bridge's address: the subnet's first host."""
    return ipaddress.ip_interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")


class IPAM:
    def __init__(self, store: Records) -> None:
        self.store = store
        self._lock = threading.Lock()

    def leases(self) -> dict[str, dict[str, Any]]:
        return self.store.list(KIND)

    def of_pod(self, pod_id: str) -> list[str]:
        return sorted(ip for ip, lease in self.leases().items() if lease.get("pod_id") == pod_id)

    def allocate(self, subnet: Network, pod_id: str, bridge: str) -> Interface:
        """The pod's address in ``subnet`` (its existing lease there, else the lowest free host)."""
        with self._lock:
            leases = self.leases()
            for ip, lease in leases.items():
                if lease.get("pod_id") == pod_id and ipaddress.ip_address(ip) in subnet:
                    return ipaddress.ip_interface(f"{ip}/{subnet.prefixlen}")
            gateway = gateway_of(subnet).ip
            for host in subnet.hosts():
                if host == gateway or str(host) in leases:
                    continue
                with self.store.transaction() as tx:
                    tx.put(KIND, str(host), {"pod_id": pod_id, "subnet": str(subnet), "bridge": bridge})
                return ipaddress.ip_interface(f"{host}/{subnet.prefixlen}")
        raise ResourceExhausted(f"no free address left in {subnet} for the pod", pod_id)

    def release(self, pod_id: str) -> list[str]:
        """Drop every lease of ``pod_id``; returns the addresses released."""
        with self._lock:
            mine = [ip for ip, lease in self.leases().items() if lease.get("pod_id") == pod_id]
            if mine:
                with self.store.transaction() as tx:
                    for ip in mine:
                        tx.delete(KIND, ip)
        return mine

    def families_of(self, pod_id: str) -> set[int]:
        """IP versions the pod holds leases in (4, 6)."""
        return {ipaddress.ip_address(ip).version for ip in self.of_pod(pod_id)}
