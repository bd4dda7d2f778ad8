"""Recovery at start: rebuild the index from the store and reconcile it with the machine.

- A pod whose RunPodSandbox never finished (``complete=False``: the daemon died mid-run) is torn down
  from its recorded intent and forgotten; kubelet will run it again.
- A READY pod whose namespaces are gone (a reboot emptied /run, or its PID holder died) is torn down
  and marked NOTREADY, as kubelet expects of a sandbox that lost its network.
- A NOTREADY pod whose stop was interrupted (it still has addresses or pins) has its teardown finished.
- A pod whose creation was interrupted also loses the cgroup parent it prepared.
- Pins, leases, veths and hostPort chains that belong to no ready pod are released; the built-in
  network's shared parts are checked and repaired, never removed (sandbox/bridge/network.py).
- A pod whose removal was interrupted keeps its ``removing`` intent; it is removed once containers
  have recovered (``finish_removals`` in remove.py).

Each of these steps is about one pod (or lease); one that fails is logged, counted and retried
(``Cleanups``) while the others go on, so no leftover keeps the daemon from serving.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from calyx_base.errors import Internal, NotFound
from cri.pods.deps import PodDeps
from cri.pods.model import NOTREADY, Pod
from cri.pods.stop import finish_teardown, teardown_pending
from cri.pods.teardown import detach_network, pod_ref, release_namespaces, remove_dir
from sandbox import namespaces, pidns

log = logging.getLogger("cri.pods")


def _intact(pod: Pod) -> bool:
    pins = [p for p in (pod.netns_path, pod.ipc_ns_path, pod.uts_ns_path, pod.user_ns_path) if p]
    if any(not namespaces.is_pinned(Path(p)) for p in pins):
        return False
    return not (pod.pid_ns_path and not pidns.is_alive(Path(pod.pid_ns_path)))


def _check_network(deps: PodDeps, pod: Pod) -> None:
    """CNI CHECK of a pod that survived the restart; a failure is reported, the pod is left as it is
    (kubelet decides whether to recreate it)."""
    try:
        deps.networks.check(pod.network, pod_ref(pod))
    except Exception as exc:
        log.warning("pod network check failed", extra={"pod_id": pod.id, "error": str(exc)})


def _finish_teardown(deps: PodDeps, pod: Pod) -> Pod:
    """The stop's own teardown; when it fails the pod keeps its IPs, so that kubelet's StopPodSandbox
    retry, the cleanup retries or the next start try the CNI DEL again instead of leaking the address."""
    try:
        return finish_teardown(deps, pod)
    except Exception as exc:
        deps.cleanups.defer("network", pod.id, lambda: _retry_teardown(deps, pod.id), exc, "teardown")
        return pod


def _retry_teardown(deps: PodDeps, pod_id: str) -> None:
    """The teardown of a stopped pod, under its lock, if it is still due (kubelet's stop or remove may
    have done it meanwhile)."""
    with deps.index.locked(pod_id):
        try:
            pod = deps.index.get(pod_id)
        except NotFound:
            return
        if teardown_pending(pod):
            finish_teardown(deps, pod)


def _undo_interrupted_run(deps: PodDeps, pod: Pod) -> None:
    """Undo what a RunPodSandbox a crash interrupted made, from its recorded intent. Every step runs;
    the record goes only once all succeeded, so the failed ones are tried again (all are idempotent)."""
    errors = []
    steps: list[tuple[str, Callable[[], object]]] = [
        ("detach network", lambda: detach_network(deps.networks, pod)),
        ("release namespaces", lambda: release_namespaces(deps.run_root, pod)),
        ("remove pod dir", lambda: remove_dir(Path(pod.pod_dir))),
    ]
    if pod.cgroup_parent:
        steps.append(("remove cgroup parent", lambda: deps.cgroups.remove_parent(pod.cgroup_parent)))
    for what, step in steps:
        try:
            step()
        except Exception as exc:
            errors.append(f"{what}: {exc}")
    if errors:
        raise Internal(f"undoing the interrupted creation of pod {pod.id}: {'; '.join(errors)}", pod.id)
    deps.index.erase(pod.id)


def recover_pods(deps: PodDeps) -> None:
    cleanups = deps.cleanups
    ready: set[str] = set()
    for pod_id, record in deps.index.stored().items():
        try:
            pod = Pod.from_record(record)
        except (KeyError, TypeError) as exc:
            log.error("unreadable pod record dropped", extra={"pod_id": pod_id, "error": repr(exc)})
            deps.index.erase(pod_id)
            continue
        if not pod.complete:
            log.warning("cleaning up a pod whose creation was interrupted", extra={"pod_id": pod_id})
            cleanups.attempt("pod", pod_id, partial(_undo_interrupted_run, deps, pod), "undo run")
            continue
        if pod.ready and not _intact(pod):
            log.warning("pod lost its namespaces; marking it not ready", extra={"pod_id": pod_id})
            pod = dataclasses.replace(pod, state=NOTREADY)
            deps.index.save(pod)
        if teardown_pending(pod):
            log.warning("finishing the teardown of a stopped or broken pod", extra={"pod_id": pod_id})
            pod = _finish_teardown(deps, pod)
        deps.index.save(pod)
        if pod.ready:
            ready.add(pod_id)
            _check_network(deps, pod)
            if pod.pid_ns_path:
                holder = pidns.init_pid(Path(pod.pid_ns_path))
                if holder is not None:
                    deps.watch.add(pod.id, holder)
    # Pins, holders and leases of pods that are not ready: a pod that is not ready now never will be
    # (kubelet makes a new one), so a retry of these later cannot hit a pod in use.
    for kind, ids in namespaces.leftover_pins(deps.run_root).items():
        for pod_id in ids:
            if pod_id not in ready:
                log.warning("releasing a namespace pin no pod owns", extra={"pod_id": pod_id, "kind": kind})
                pin = namespaces.pin_path(deps.run_root, kind, pod_id)
                cleanups.attempt("pod", pod_id, partial(namespaces.release, pin), f"{kind} pin")
    pid_dir = namespaces.pin_dir(deps.run_root, "pid")
    if pid_dir.is_dir():
        for pin in pid_dir.iterdir():
            if pin.name not in ready:
                cleanups.attempt("pod", pin.name, partial(pidns.release, pin), "pid holder")
    bridge = deps.networks.bridge
    for pod_id, name in bridge.stale_leases(ready):
        cleanups.attempt("network", pod_id, partial(bridge.detach, pod_id, name), "lease")
    # The built-in network's shared parts are checked and repaired (never removed), the live pods'
    # hostPort rules with them; a failure is retried.
    ports = {pod_id: list(deps.index.get(pod_id).network.get("port_mappings", [])) for pod_id in ready}
    cleanups.attempt("network", bridge.bridge, partial(bridge.recover, ports), "bridge")
