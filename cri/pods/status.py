"""A pod as CRI's PodSandboxStatus: shared by the PodSandboxStatus RPC and the lifecycle events."""

from __future__ import annotations

from typing import Any

from cri.api import api_pb2 as pb
from cri.pods.model import READY, Pod

_MODES = {"POD": pb.POD, "CONTAINER": pb.CONTAINER, "NODE": pb.NODE, "TARGET": pb.TARGET}


def sandbox_state(pod: Pod) -> pb.PodSandboxState:
    return pb.SANDBOX_READY if pod.state == READY else pb.SANDBOX_NOTREADY


def _userns(userns: dict[str, Any]) -> pb.UserNamespace | None:
    """The pod's user namespace as requested (mode and mappings), None when none was given."""
    if not userns:
        return None
    return pb.UserNamespace(
        mode=_MODES[userns["mode"]],
        uids=[pb.IDMapping(**m) for m in userns.get("uids", [])],
        gids=[pb.IDMapping(**m) for m in userns.get("gids", [])],
    )


def pod_status(pod: Pod) -> pb.PodSandboxStatus:
    options = pod.namespace_options
    network = pb.PodSandboxNetworkStatus()
    if pod.ips:
        network.ip = pod.ips[0]
        network.additional_ips.extend(pb.PodIP(ip=ip) for ip in pod.ips[1:])
    return pb.PodSandboxStatus(
        id=pod.id,
        metadata=pod.metadata.to_pb(),
        state=sandbox_state(pod),
        created_at=pod.created_at,
        network=network,
        linux=pb.LinuxPodSandboxStatus(
            namespaces=pb.Namespace(
                options=pb.NamespaceOption(
                    network=_MODES[options["network"]],
                    pid=_MODES[options["pid"]],
                    ipc=_MODES[options["ipc"]],
                    target_id=options.get("target_id", ""),
                    userns_options=_userns(options.get("userns") or {}),
                )
            )
        ),
        labels=pod.labels,
        annotations=pod.annotations,
        runtime_handler=pod.runtime_handler,
    )
