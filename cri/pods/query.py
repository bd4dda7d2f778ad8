"""Read-only views of pods: List filters and the verbose status info."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from calyx_base.errors import NotFound
from cri.api import api_pb2 as pb
from cri.pods.model import NOTREADY, READY, Pod
from cri.pods.service import PodService
from sandbox import pidns

STATE_NAMES = {pb.SANDBOX_READY: READY, pb.SANDBOX_NOTREADY: NOTREADY}


def filtered(svc: PodService, flt: pb.PodSandboxFilter | None) -> list[Pod]:
    """Pods matching ``flt``: id (full or unique prefix), state, and every label of the selector."""
    if flt is None:
        return sorted(svc.list(), key=lambda p: p.created_at)
    if flt.id:
        try:
            pods = [svc.get(flt.id)]
        except NotFound:
            return []
    else:
        pods = svc.list()
    if flt.HasField("state"):
        wanted = STATE_NAMES.get(flt.state.state)
        pods = [p for p in pods if p.state == wanted]
    if flt.label_selector:
        selector = dict(flt.label_selector)
        pods = [p for p in pods if all(p.labels.get(k) == v for k, v in selector.items())]
    return sorted(pods, key=lambda p: p.created_at)


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
