"""Lifecycle events for kubelet's evented PLEG, with the payload it expects.

Every event carries the pod's PodSandboxStatus and the ContainerStatus of the pod's containers, built
by the same code as the status RPCs, so that kubelet can update its pod cache from the event alone.
A container event lists its own container first (also in its DELETED event, with its last status).

Callers publish while holding the object's lock (pod lock, container lock): that, and the bus
serialising publication, keeps the events of one object in the order the changes happened.
A failure to build a payload is logged and never fails the operation that changed the object.
"""

from __future__ import annotations

import logging
from typing import Any

from cri.api import api_pb2 as pb

log = logging.getLogger("cri.lifecycle")


def _pod_status(runtime: Any, pod_id: str, pod: Any = None) -> pb.PodSandboxStatus | None:
    from cri.pods.status import pod_status

    if pod is None:
        pods = getattr(runtime, "pods", None)
        if pods is None:
            return None
        try:
            pod = pods.get(pod_id)
        except Exception:
            return None
    return pod_status(pod)


def container_statuses(runtime: Any, pod_id: str, first: Any = None) -> list[pb.ContainerStatus]:
    """The statuses of the pod's containers (``first`` leading), as events and PodSandboxStatus carry them."""
    from cri.containers.model import CREATING
    from cri.containers.status import to_status

    containers = getattr(runtime, "containers", None)
    members = list(containers.of_pod(pod_id)) if containers is not None else []
    ordered = ([first] if first is not None else []) + [
        c for c in members if first is None or c.id != first.id
    ]
    return [to_status(c) for c in ordered if c.state != CREATING]


def publish_pod(runtime: Any, pod: Any, event_type: int) -> None:
    """An event about the pod sandbox ``pod`` (its id is the event's container_id, as in containerd)."""
    _publish(runtime, pod.id, event_type, pod.id, pod=pod)


def publish_container(runtime: Any, container: Any, event_type: int) -> None:
    """An event about ``container``, with its pod's status and the statuses of the pod's containers."""
    _publish(runtime, container.id, event_type, container.pod_id, first=container)


def _publish(
    runtime: Any, object_id: str, event_type: int, pod_id: str, pod: Any = None, first: Any = None
) -> None:
    """The statuses are built only for subscribers (kubelet's evented PLEG): without any, every create,
    start and stop would build the pod's and all its containers' statuses for nobody."""
    events = getattr(runtime, "events", None)
    if events is None:
        return
    try:
        if not events.subscriber_count:
            events.emit(object_id, event_type)  # still counted in calyx's event metrics
            return
        events.emit(
            object_id,
            event_type,
            _pod_status(runtime, pod_id, pod),
            container_statuses(runtime, pod_id, first),
        )
    except Exception:
        log.exception("event not published", extra={"object_id": object_id})
