"""StopPodSandbox: stop the pod's containers, detach its network, release its namespaces.

Idempotent: a pod that is unknown or already stopped is not an error. The stored record turns NOTREADY
first, keeping what the teardown needs (``ips``, the network record), so that recovery finishes a stop
a crash interrupted; the listed pod turns NOTREADY once everything is released. If a step fails (a CNI
DEL error, say) the error, with the plugin's message, goes to kubelet, which retries the stop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from calyx_base import failpoints
from calyx_base.errors import NotFound
from cri.api import api_pb2 as pb
from cri.pods.deps import PodDeps
from cri.pods.model import NOTREADY, Pod
from cri.pods.teardown import detach_network, release_namespaces

log = logging.getLogger("cri.pods")


def stop_pod(deps: PodDeps, pod_id: str) -> None:
    start = time.monotonic()
    try:
        full_id = deps.index.resolve_id(pod_id)
    except NotFound:
        log.info("stop of unknown pod sandbox: nothing to do", extra={"pod_id": pod_id})
        return
    with deps.index.locked(full_id):
        try:
            pod = deps.index.get(full_id)
        except NotFound:
            return  # removed while we waited for the lock
        deps.containers.stop_pod_containers(pod.id, 0)
        failpoints.hit("pod.stop_after_containers", pod_id=pod.id)
        was_ready = pod.ready
        if was_ready:
            # The intent, in the store before the first teardown step: after a crash, recovery finds
            # a NOTREADY pod still holding ``ips``/pins and finishes the teardown (it must never be
            # listed READY without its network). The index turns NOTREADY once all is released.
            pod = dataclasses.replace(pod, state=NOTREADY)
            deps.index.record(pod)
            failpoints.hit("pod.stop_after_intent", pod_id=pod.id)
        if teardown_pending(pod):
            finish_teardown(deps, pod)
        elif was_ready:
            deps.index.save(pod)  # nothing to release (host namespaces only)
        if was_ready:
            deps.events.pod_changed(deps.index.get(pod.id), pb.CONTAINER_STOPPED_EVENT)
    log.info(
        "pod sandbox stopped", extra={"pod_id": full_id, "duration_ms": (time.monotonic() - start) * 1000}
    )


def teardown_pending(pod: Pod) -> bool:
    """A NOTREADY pod whose network or namespaces were not (all) released: a stop that failed or was
    interrupted by a crash. Its retry, or recovery, finishes it."""
    if pod.ready:
        return False
    pins = [
        p for p in (pod.netns_path, pod.ipc_ns_path, pod.uts_ns_path, pod.pid_ns_path, pod.user_ns_path) if p
    ]
    return bool(pod.ips) or any(os.path.lexists(p) for p in pins)


def finish_teardown(deps: PodDeps, pod: Pod) -> Pod:
    """Detach the network and release the namespaces of a NOTREADY pod, then record it as released.
    A failure leaves the record as it was (its IPs say a teardown is still due)."""
    detach_network(deps.networks, pod)
    failpoints.hit("pod.stop_after_network", pod_id=pod.id)
    release_namespaces(deps.run_root, pod)
    failpoints.hit("pod.stop_after_namespaces", pod_id=pod.id)
    released = dataclasses.replace(pod, ips=[])
    deps.index.save(released)
    return released
