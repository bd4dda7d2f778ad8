"""Pod networking: CNI when the conf dir holds a config, else the built-in bridge network.

The choice is made when a pod is run and recorded with the pod (``plan``), together with the CNI network
list it was added to; teardown follows that record, so a changed or deleted config, or a daemon restart,
never leaves a pod that cannot be detached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calyx_base.errors import FailedPrecondition
from sandbox.bridge import BridgeNetwork
from sandbox.bridge.ipam import Records
from sandbox.cni import CNINetwork, NetworkList, PodRef
from sandbox.cni.config import ConfigError
from sandbox.cni.network import result_ips

log = logging.getLogger("sandbox.network")

NOT_READY = "NetworkPluginNotReady"


@dataclass(frozen=True)
class Readiness:
    """Whether pods can get a network now (CRI's NetworkReady condition), and why not."""

    ready: bool
    reason: str = ""
    message: str = ""


class PodNetworks:
    def __init__(
        self,
        cni_conf_dir: Path,
        cni_bin_dirs: list[str],
        cni_plugin_timeout: float,
        bridge: str,
        subnet: str,
        subnet_v6: str,
        leases: Records,
        pod_cidr: Callable[[], str],
    ) -> None:
        self.cni = CNINetwork(cni_conf_dir, cni_bin_dirs, cni_plugin_timeout)
        self.bridge = BridgeNetwork(bridge, subnet, leases, pod_cidr, subnet_v6)

    def readiness(self) -> Readiness:
        """Built-in network (no CNI config), or a CNI config whose plugins all exist."""
        if self.cni.config_path() is None:
            return Readiness(True, "", f"built-in network on bridge {self.bridge.bridge}")
        ok, why = self.cni.readiness()
        if ok:
            return Readiness(True)
        return Readiness(False, NOT_READY, why)

    def plan(self) -> dict[str, Any]:
        """What a new pod will be attached to, recorded before anything is made."""
        try:
            netlist = self.cni.current()
        except ConfigError as exc:
            raise FailedPrecondition(f"pod network not ready: {exc}") from None
        if netlist is None:
            return {"kind": "bridge", "bridge": self.bridge.bridge}
        missing = self.cni.missing_plugins(netlist)
        if missing:
            raise FailedPrecondition(
                f"pod network not ready: CNI plugins {', '.join(missing)} of network {netlist.name!r} "
                f"not found in {', '.join(self.cni.bin_dirs)}"
            )
        return {"kind": "cni", "network": netlist.to_record(), "result": None}

    def setup(self, plan: dict[str, Any], pod: PodRef) -> tuple[dict[str, Any], list[str]]:
        """Attach the pod as planned; returns the updated record and the pod's IPs."""
        if plan["kind"] == "cni":
            netlist = NetworkList.from_record(plan["network"])
            result = self.cni.add(netlist, pod)
            return {**plan, "result": result}, result_ips(result)
        record = self.bridge.attach(pod.pod_id, Path(pod.netns), pod.port_mappings, pod.bandwidth)
        return record, [address.split("/")[0] for address in record["addresses"]]

    def teardown(self, record: dict[str, Any], pod: PodRef) -> None:
        """Detach the pod; idempotent, safe after a partial setup."""
        if record.get("kind") == "cni":
            netlist = NetworkList.from_record(record["network"])
            self.cni.delete(netlist, pod, record.get("result"))
        elif record.get("kind") == "bridge":
            # Records have always held the pod's port mappings; None (unknown) has the rules looked up.
            self.bridge.detach(pod.pod_id, record.get("bridge"), record.get("port_mappings"))

    def check(self, record: dict[str, Any], pod: PodRef) -> None:
        if record.get("kind") == "cni" and record.get("result"):
            self.cni.check(NetworkList.from_record(record["network"]), pod, record["result"])
