"""RemovePodSandbox: stop the pod if needed, remove its containers, files and record.

Idempotent like stop. The record goes last, so a remove interrupted by a crash is simply retried.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cri import failpoints, lifecycle
from cri.api import api_pb2 as pb
from cri.errors import NotFound
from cri.pods.service import PodService
from cri.pods.stop import stop_pod
from cri.pods.teardown import remove_dir

log = logging.getLogger("cri.pods")


def remove_pod(svc: PodService, pod_id: str) -> None:
    start = time.monotonic()
    try:
        full_id = svc.resolve_id(pod_id)
    except NotFound:
        log.info("remove of unknown pod sandbox: nothing to do", extra={"pod_id": pod_id})
        return
    stop_pod(svc, full_id)
    with svc.locked(full_id):
        try:
            pod = svc.get(full_id)
        except NotFound:
            return
        containers = svc.containers
        if containers is not None and hasattr(containers, "remove_pod_containers"):
            containers.remove_pod_containers(pod.id)
        failpoints.hit("pod.remove_after_containers", pod_id=pod.id)
        cgroups = svc.cgroups
        if cgroups is not None and pod.cgroup_parent and hasattr(cgroups, "remove_parent"):
            cgroups.remove_parent(pod.cgroup_parent)
        remove_dir(Path(pod.pod_dir))
        failpoints.hit("pod.remove_after_dir", pod_id=pod.id)
        svc.forget(pod)
        lifecycle.publish_pod(svc.runtime, pod, pb.CONTAINER_DELETED_EVENT)
    log.info(
        "pod sandbox removed", extra={"pod_id": full_id, "duration_ms": (time.monotonic() - start) * 1000}
    )
