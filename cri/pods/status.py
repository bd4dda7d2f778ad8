"""A pod as CRI's PodSandboxStatus: shared by the PodSandboxStatus RPC and the lifecycle events."""

from __future__ import annotations

from cri.api import api_pb2 as pb
from cri.pods.model import READY, Pod

_MODES = {"POD": pb.POD, "CONTAINER": pb.CONTAINER, "NODE": pb.NODE, "TARGET": pb.TARGET}


def sandbox_state(pod: Pod) -> pb.PodSandboxState:
    return pb.SANDBOX_READY if pod.state == READY else pb.SANDBOX_NOTREADY


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
                )
            )
        ),
        labels=pod.labels,
        annotations=pod.annotations,
        runtime_handler=pod.runtime_handler,
    )
