"""StopPodSandbox: stop the pod's containers, detach its network, release its namespaces.

Idempotent: a pod that is unknown or already stopped is not an error. The record turns NOTREADY only
after everything is released; if a step fails (a CNI DEL error, say) the pod stays READY and the error,
with the plugin's message, goes to kubelet, which retries the stop.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from cri import failpoints, lifecycle
from cri.api import api_pb2 as pb
from cri.errors import NotFound
from cri.pods.model import NOTREADY
from cri.pods.service import PodService
from cri.pods.teardown import detach_network, release_namespaces

log = logging.getLogger("cri.pods")


def stop_pod(svc: PodService, pod_id: str) -> None:
    start = time.monotonic()
    try:
        full_id = svc.resolve_id(pod_id)
    except NotFound:
        log.info("stop of unknown pod sandbox: nothing to do", extra={"pod_id": pod_id})
        return
    with svc.locked(full_id):
        try:
            pod = svc.get(full_id)
        except NotFound:
            return  # removed while we waited for the lock
        containers = svc.containers
        if containers is not None and hasattr(containers, "stop_pod_containers"):
            containers.stop_pod_containers(pod.id, 0)
        if not pod.ready:
            return
        detach_network(svc.networks, pod)
        failpoints.hit("pod.stop_after_network", pod_id=pod.id)
        release_namespaces(svc.run_root, pod)
        stopped = dataclasses.replace(pod, state=NOTREADY, ips=[])
        svc.save(stopped)
        lifecycle.publish_pod(svc.runtime, stopped, pb.CONTAINER_STOPPED_EVENT)
    log.info(
        "pod sandbox stopped", extra={"pod_id": full_id, "duration_ms": (time.monotonic() - start) * 1000}
    )
