"""Recovery at start: rebuild the index from the store and reconcile it with the machine.

- A pod whose RunPodSandbox never finished (``complete=False``: the daemon died mid-run) is torn down
  from its recorded intent and forgotten; kubelet will run it again.
- A READY pod whose namespaces are gone (a reboot emptied /run, or its PID holder died) is torn down
  and marked NOTREADY, as kubelet expects of a sandbox that lost its network.
- A NOTREADY pod whose stop was interrupted (it still has addresses or pins) has its teardown finished.
- A pod whose creation was interrupted also loses the cgroup parent it prepared.
- Pins, leases, veths and chains that belong to no ready pod are released.
- A pod whose removal was interrupted keeps its ``removing`` intent; it is removed once containers
  have recovered (``finish_removals`` in remove.py).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from cri.pods.model import KIND, NOTREADY, Pod
from cri.pods.service import PodService
from cri.pods.stop import finish_teardown, teardown_pending
from cri.pods.teardown import detach_network, pod_ref, quietly, release_namespaces, remove_dir
from sandbox import namespaces, pidns

log = logging.getLogger("cri.pods")


def _intact(pod: Pod) -> bool:
    pins = [p for p in (pod.netns_path, pod.ipc_ns_path, pod.uts_ns_path, pod.user_ns_path) if p]
    if any(not namespaces.is_pinned(Path(p)) for p in pins):
        return False
    return not (pod.pid_ns_path and not pidns.is_alive(Path(pod.pid_ns_path)))


def _check_network(svc: PodService, pod: Pod) -> None:
    """CNI CHECK of a pod that survived the restart; a failure is reported, the pod is left as it is
    (kubelet decides whether to recreate it)."""
    try:
        svc.networks.check(pod.network, pod_ref(pod))
    except Exception as exc:
        log.warning("pod network check failed", extra={"pod_id": pod.id, "error": str(exc)})


def _finish_teardown(svc: PodService, pod: Pod) -> Pod:
    """The stop's own teardown; when it fails the pod keeps its IPs, so that kubelet's StopPodSandbox
    retry (or the next start) tries the CNI DEL again instead of leaking the address."""
    try:
        return finish_teardown(svc, pod)
    except Exception as exc:
        log.warning("teardown still due", extra={"pod_id": pod.id, "error": str(exc)})
        return pod


def recover_pods(svc: PodService) -> None:
    ready: set[str] = set()
    for pod_id, record in svc.store.list(KIND).items():
        try:
            pod = Pod.from_record(record)
        except (KeyError, TypeError) as exc:
            log.error("unreadable pod record dropped", extra={"pod_id": pod_id, "error": repr(exc)})
            svc.store.delete(KIND, pod_id)
            continue
        if not pod.complete:
            log.warning("cleaning up a pod whose creation was interrupted", extra={"pod_id": pod_id})
            quietly("detach network", pod_id, detach_network, svc.networks, pod)
            quietly("release namespaces", pod_id, release_namespaces, svc.run_root, pod)
            quietly("remove pod dir", pod_id, remove_dir, Path(pod.pod_dir))
            cgroups = svc.cgroups
            if cgroups is not None and pod.cgroup_parent and hasattr(cgroups, "remove_parent"):
                quietly("remove cgroup parent", pod_id, cgroups.remove_parent, pod.cgroup_parent)
            svc.store.delete(KIND, pod_id)
            continue
        if pod.ready and not _intact(pod):
            log.warning("pod lost its namespaces; marking it not ready", extra={"pod_id": pod_id})
            pod = dataclasses.replace(pod, state=NOTREADY)
            svc.save(pod)
        if teardown_pending(pod):
            log.warning("finishing the teardown of a stopped or broken pod", extra={"pod_id": pod_id})
            pod = _finish_teardown(svc, pod)
        svc.save(pod)
        if pod.ready:
            ready.add(pod_id)
            _check_network(svc, pod)
            if pod.pid_ns_path:
                holder = pidns.init_pid(Path(pod.pid_ns_path))
                if holder is not None:
                    svc.watch.add(pod.id, holder)
    for kind, ids in namespaces.leftover_pins(svc.run_root).items():
        for pod_id in ids:
            if pod_id not in ready:
                log.warning("releasing a namespace pin no pod owns", extra={"pod_id": pod_id, "kind": kind})
                namespaces.release(namespaces.pin_path(svc.run_root, kind, pod_id))
    pid_dir = namespaces.pin_dir(svc.run_root, "pid")
    if pid_dir.is_dir():
        for pin in pid_dir.iterdir():
            if pin.name not in ready:
                quietly("release pid holder", pin.name, pidns.release, pin)
    quietly("release unknown leases", "-", svc.networks.bridge.release_unknown, ready)
