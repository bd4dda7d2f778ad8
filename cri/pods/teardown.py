"""Undoing what a pod holds: network, PID holder, namespace pins, files. Each step is idempotent and
derives what to remove from the pod record, so run's undo stack, stop, remove and recovery share them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cri.pods.model import Pod
from sandbox import namespaces, pidns, trees
from sandbox.cni import PodRef, bandwidth

log = logging.getLogger("cri.pods")


def pod_ref(pod: Pod) -> PodRef:
    return PodRef(
        pod_id=pod.id,
        name=pod.metadata.name,
        namespace=pod.metadata.namespace,
        uid=pod.metadata.uid,
        netns=pod.netns_path or "",
        port_mappings=list(pod.network.get("port_mappings", [])),
        bandwidth=bandwidth.from_annotations(pod.annotations),
    )


def detach_network(networks: Any, pod: Pod) -> None:
    if pod.network:
        networks.teardown(pod.network, pod_ref(pod))


def release_namespaces(run_root: Path, pod: Pod) -> None:
    """Kill the PID holder (with whatever runs in that namespace) and release every pin of the pod."""
    if pod.pid_ns_path:
        pidns.release(Path(pod.pid_ns_path))
    pidns_pin = pidns.pin_path(run_root, pod.id)
    if pidns_pin.exists():
        pidns.release(pidns_pin)
    namespaces.release_pod(run_root, pod.id)


def remove_dir(path: Path) -> None:
    """Remove the pod's dir (any tree, sandbox/trees.py); RemoveFailed says what could not go."""
    trees.remove_tree(path)


def quietly(what: str, pod_id: str, fn: Callable[..., Any], *args: Any) -> None:
    """Run an undo step; log a failure instead of letting it hide the error being undone."""
    try:
        fn(*args)
    except Exception as exc:
        log.warning("cleanup step failed", extra={"pod_id": pod_id, "step": what, "error": str(exc)})
