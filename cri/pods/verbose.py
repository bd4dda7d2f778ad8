"""PodSandboxStatus's verbose info: a JSON document of what Calyx knows of a pod, for crictl inspectp."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cri.pods.model import Pod
from sandbox import pidns


def verbose_info(pod: Pod) -> dict[str, str]:
    """``info["info"]``: a JSON document for crictl inspectp and debugging."""
    holder: list[int] = []
    if pod.pid_ns_path and pod.ready:
        holder = pidns.holder_pids(Path(pod.pid_ns_path))
    info: dict[str, Any] = {
        "id": pod.id,
        "state": pod.state,
        "runtimeHandler": pod.runtime_handler,
        "hostname": pod.hostname,
        "cgroupParent": pod.cgroup_parent,
        "namespaces": {
            "network": pod.netns_path,
            "ipc": pod.ipc_ns_path,
            "uts": pod.uts_ns_path,
            "pid": pod.pid_ns_path,
            "user": pod.user_ns_path,
        },
        "pidHolder": holder[0] if holder else None,
        "files": {
            "resolv.conf": pod.resolv_conf_path,
            "hosts": pod.hosts_path,
            "hostname": pod.hostname_path,
        },
        "ips": pod.ips,
        "network": _network_view(pod.network),
        "config": pod.config,
    }
    return {"info": json.dumps(info, sort_keys=True)}


def _network_view(record: dict[str, Any]) -> dict[str, Any]:
    if record.get("kind") == "cni":
        network = record.get("network", {})
        return {
            "kind": "cni",
            "name": network.get("raw", {}).get("name"),
            "source": network.get("source"),
            "result": record.get("result"),
        }
    return dict(record)
