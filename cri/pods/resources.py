"""UpdatePodSandboxResources: record the pod-level resources kubelet has applied.

kubelet owns the pod-level cgroup (it made ``cgroup_parent`` and resizes it itself during an in-place
pod resize); this call tells the runtime the new pod-level overhead and resources afterwards
(containerd and CRI-O hand them to NRI plugins). Calyx has no such plugins, so it records them in the
pod (``linux.overhead``/``linux.resources``, what the pod's containers and verbose status read) and
does not write the pod cgroup, which would race kubelet's own writes.
"""

from __future__ import annotations

import dataclasses
import logging

from calyx_base.errors import FailedPrecondition
from cri.api import api_pb2 as pb
from cri.pods.deps import PodDeps
from cri.pods.model import message_dict

log = logging.getLogger("cri.pods")


def update_pod_resources(deps: PodDeps, request: pb.UpdatePodSandboxResourcesRequest) -> None:
    full_id = deps.index.resolve_id(request.pod_sandbox_id)  # NotFound for an unknown pod
    with deps.index.locked(full_id):
        pod = deps.index.get(full_id)
        if not pod.ready:
            raise FailedPrecondition(f"pod sandbox {full_id} is not ready", full_id)
        linux = dict(pod.linux)
        if request.HasField("overhead"):
            linux["overhead"] = message_dict(request.overhead)
        if request.HasField("resources"):
            linux["resources"] = message_dict(request.resources)
        deps.index.save(dataclasses.replace(pod, linux=linux))
    log.info("pod sandbox resources recorded", extra={"pod_id": full_id})
