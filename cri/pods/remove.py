"""RemovePodSandbox: stop the pod if needed, remove its containers, files and record.

Idempotent like stop. Once the pod is stopped, the intent to remove it (``removing``) is stored before
anything is removed, and the record goes last: a removal a crash interrupted is finished at the next
start (``finish_removals``, once containers have recovered), so kubelet need not retry it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from functools import partial
from pathlib import Path

from calyx_base import failpoints
from calyx_base.errors import NotFound
from cri.api import api_pb2 as pb
from cri.pods.deps import PodDeps
from cri.pods.stop import stop_pod
from cri.pods.teardown import remove_dir

log = logging.getLogger("cri.pods")


def remove_pod(deps: PodDeps, pod_id: str) -> None:
    start = time.monotonic()
    try:
        full_id = deps.index.resolve_id(pod_id)
    except NotFound:
        log.info("remove of unknown pod sandbox: nothing to do", extra={"pod_id": pod_id})
        return
    stop_pod(deps, full_id)
    with deps.index.locked(full_id):
        try:
            pod = deps.index.get(full_id)
        except NotFound:
            return
        if not pod.removing:
            pod = dataclasses.replace(pod, removing=True)
            deps.index.save(pod)
            failpoints.hit("pod.remove_after_intent", pod_id=pod.id)
        deps.containers.remove_pod_containers(pod.id)
        failpoints.hit("pod.remove_after_containers", pod_id=pod.id)
        if pod.cgroup_parent:
            deps.cgroups.remove_parent(pod.cgroup_parent)
        remove_dir(Path(pod.pod_dir))
        failpoints.hit("pod.remove_after_dir", pod_id=pod.id)
        deps.index.forget(pod)
        deps.events.pod_changed(pod, pb.CONTAINER_DELETED_EVENT)
    log.info(
        "pod sandbox removed", extra={"pod_id": full_id, "duration_ms": (time.monotonic() - start) * 1000}
    )


def finish_removals(deps: PodDeps) -> None:
    """Complete every removal a crash interrupted (pods recorded ``removing``). Runs after the
    containers subsystem has recovered, since the pod's containers go first; a failure is logged,
    counted and retried, and the pod stays listed NOTREADY for kubelet's retry of RemovePodSandbox."""
    for pod in deps.index.list():
        if not pod.removing:
            continue
        log.warning("finishing an interrupted pod removal", extra={"pod_id": pod.id})
        deps.cleanups.attempt("pod", pod.id, partial(remove_pod, deps, pod.id), "remove")


class PendingRemovals:
    """The subsystem that runs ``finish_removals`` in recovery order, after containers."""

    def __init__(self, deps: PodDeps) -> None:
        self.deps = deps

    def recover(self) -> None:
        finish_removals(self.deps)

    def close(self) -> None:
        pass
