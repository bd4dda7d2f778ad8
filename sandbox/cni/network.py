"""ADD, CHECK and DEL of a pod on a CNI network list.

ADD runs the plugins in order, each one getting the previous one's result as ``prevResult``; DEL runs
them in reverse with the cached ADD result, CHECK in order with it. The caller keeps the network list
and the result with the pod (in the store), which is all DEL needs after a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.cni.config import ConfigError, NetworkList, find_config, load
from sandbox.cni.invoke import PluginError, find_plugin, run_plugin

log = logging.getLogger("sandbox.cni")

IFNAME = "eth0"


@dataclass(frozen=True)
class PodRef:
    """What the plugins are told about a pod."""

    pod_id: str
    name: str
    namespace: str
    uid: str
    netns: str
    port_mappings: list[dict[str, Any]] = field(default_factory=list)
    bandwidth: dict[str, Any] = field(default_factory=dict)  # see sandbox/cni/bandwidth.py

    @property
    def label(self) -> str:
        """How messages name the pod: kubelet's namespace/name and the sandbox id."""
        return f"{self.namespace}/{self.name} ({self.pod_id})"

    @property
    def cni_args(self) -> str:
        return ";".join(
            [
                "IgnoreUnknown=1",
                f"K8S_POD_NAMESPACE={self.namespace}",
                f"K8S_POD_NAME={self.name}",
                f"K8S_POD_INFRA_CONTAINER_ID={self.pod_id}",
                f"K8S_POD_UID={self.uid}",
            ]
        )

    @property
    def capability_args(self) -> dict[str, Any]:
        """``portMappings`` in the form the portmap plugin reads (hostPort 0 means no mapping), and
        ``bandwidth`` when the pod asks for traffic shaping."""
        mappings = [
            {
                "hostPort": m["host_port"],
                "containerPort": m["container_port"],
                "protocol": m.get("protocol", "tcp"),
                **({"hostIP": m["host_ip"]} if m.get("host_ip") else {}),
            }
            for m in self.port_mappings
            if m.get("host_port")
        ]
        args: dict[str, Any] = {"portMappings": mappings} if mappings else {}
        if self.bandwidth:
            args["bandwidth"] = self.bandwidth
        return args


def result_ips(result: dict[str, Any] | None) -> list[str]:
    """The pod's addresses from a CNI result, IPv4 first (PodSandboxStatus reports the first as primary)."""
    if not result:
        return []
    ips = []
    for entry in result.get("ips") or []:
        address = str(entry.get("address", "")).split("/")[0]
        if address:
            ips.append(address)
    return sorted(ips, key=lambda ip: ":" in ip)


class CNINetwork:
    def __init__(self, conf_dir: Path, bin_dirs: Sequence[str], plugin_timeout_s: float) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = list(bin_dirs)
        self.plugin_timeout_s = plugin_timeout_s

    def config_path(self) -> Path | None:
        return find_config(self.conf_dir)

    def current(self) -> NetworkList | None:
        """The network list new pods get; None when the conf dir holds no config (ConfigError if bad)."""
        path = self.config_path()
        return None if path is None else load(path)

    def missing_plugins(self, netlist: NetworkList) -> list[str]:
        return [p["type"] for p in netlist.plugins if find_plugin(p["type"], self.bin_dirs) is None]

    def readiness(self) -> tuple[bool, str]:
        """(usable, why not) for the network list new pods would get."""
        try:
            netlist = self.current()
        except ConfigError as exc:
            return False, str(exc)
        if netlist is None:
            return False, f"no CNI config in {self.conf_dir}"
        missing = self.missing_plugins(netlist)
        if missing:
            return False, (
                f"CNI network {netlist.name!r} ({netlist.source}): plugins {', '.join(missing)} "
                f"not found in {', '.join(self.bin_dirs)}"
            )
        return True, ""

    def _run(
        self,
        command: str,
        plugin: dict[str, Any],
        netlist: NetworkList,
        pod: PodRef,
        prev: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        return run_plugin(
            command,
            plugin,
            name=netlist.name,
            cni_version=netlist.cni_version,
            bin_dirs=self.bin_dirs,
            container_id=pod.pod_id,
            netns=pod.netns,
            ifname=IFNAME,
            cni_args=pod.cni_args,
            prev_result=prev,
            capability_args=pod.capability_args,
            timeout_s=self.plugin_timeout_s,
            pod_label=pod.label,
        )

    def add(self, netlist: NetworkList, pod: PodRef) -> dict[str, Any]:
        start = time.monotonic()
        result: dict[str, Any] | None = None
        for plugin in netlist.plugins:
            result = self._run("ADD", plugin, netlist, pod, result) or result
        log.info(
            "cni add",
            extra={
                "pod_id": pod.pod_id,
                "network": netlist.name,
                "ips": result_ips(result),
                "duration_ms": (time.monotonic() - start) * 1000,
            },
        )
        return result or {}

    def check(self, netlist: NetworkList, pod: PodRef, result: dict[str, Any] | None) -> None:
        if not netlist.supports_check:
            return
        for plugin in netlist.plugins:
            self._run("CHECK", plugin, netlist, pod, result)

    def delete(self, netlist: NetworkList, pod: PodRef, result: dict[str, Any] | None) -> None:
        """DEL through every plugin, in reverse; all are tried, the first failure is raised at the end."""
        start = time.monotonic()
        first: PluginError | None = None
        for plugin in reversed(netlist.plugins):
            try:
                self._run("DEL", plugin, netlist, pod, result if netlist.cni_version != "0.3.0" else None)
            except PluginError as exc:
                log.warning("cni del failed", extra={"pod_id": pod.pod_id, "error": str(exc)})
                first = first or exc
        if first is not None:
            raise first
        log.info(
            "cni del",
            extra={
                "pod_id": pod.pod_id,
                "network": netlist.name,
                "duration_ms": (time.monotonic() - start) * 1000,
            },
        )
