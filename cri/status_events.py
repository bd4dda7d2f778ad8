"""Lifecycle events for kubelet's evented PLEG, with the payload it expects.

Every event carries the pod's PodSandboxStatus and the ContainerStatus of the pod's containers, built
by the same code as the status RPCs, so that kubelet can update its pod cache from the event alone.
A container event lists its own container first (also in its DELETED event, with its last status).
PodSandboxStatus asks for the same payload of one pod (``sandbox_status``).

Pods and containers publish here (they know it only as a small interface of their own: PodEvents,
ContainerEvents) while holding the object's lock (pod lock, container lock): that, and the bus
serialising publication, keeps the events of one object in the order the changes happened. A
failure to build a payload is logged and never fails the operation that changed the object.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from calyx_base.errors import NotFound
from cri.api import api_pb2 as pb
from cri.containers.model import CREATING, Container
from cri.containers.records import ContainerRecords
from cri.containers.status import to_status
from cri.events import EventBus
from cri.pods.index import PodIndex
from cri.pods.model import Pod
from cri.pods.status import pod_status
from cri.pods.verbose import verbose_info

log = logging.getLogger("cri.status_events")


@dataclass(frozen=True)
class SandboxStatus:
    """What PodSandboxStatus answers about one pod."""

    status: pb.PodSandboxStatus
    # Read after the pod and before its containers; kubelet's evented PLEG orders answers and events by it.
    timestamp: int
    containers: list[pb.ContainerStatus]
    info: dict[str, str] = field(default_factory=dict)  # verbose only (crictl inspectp)


class StatusEvents:
    def __init__(self, bus: EventBus, pods: PodIndex, containers: ContainerRecords) -> None:
        self.bus = bus
        self.pods = pods
        self.containers = containers

    def sandbox_status(self, pod_id: str, verbose: bool) -> SandboxStatus:
        """The pod named by ``pod_id`` (full id or unique prefix; NotFound) with its containers' statuses:
        with the timestamp set, kubelet's evented PLEG takes them from here instead of asking
        ContainerStatus, so they are built as for the events."""
        pod = self.pods.get(pod_id)
        status = pod_status(pod)
        timestamp = time.time_ns()
        return SandboxStatus(
            status, timestamp, self.container_statuses(pod.id), verbose_info(pod) if verbose else {}
        )

    def container_statuses(self, pod_id: str, first: Container | None = None) -> list[pb.ContainerStatus]:
        """The statuses of the pod's containers (``first`` leading), as events and PodSandboxStatus
        carry them."""
        members = self.containers.of_pod(pod_id)
        ordered = ([first] if first is not None else []) + [
            c for c in members if first is None or c.id != first.id
        ]
        return [to_status(c) for c in ordered if c.state != CREATING]

    def pod_changed(self, pod: Pod, event_type: int) -> None:
        """An event about the pod sandbox ``pod`` (its id is the event's container_id, as in containerd)."""
        self._publish(pod.id, event_type, pod.id, pod=pod)

    def container_changed(self, container: Container, event_type: int) -> None:
        """An event about ``container``, with its pod's status and the statuses of the pod's containers."""
        self._publish(container.id, event_type, container.pod_id, first=container)

    def _pod_status(self, pod_id: str, pod: Pod | None) -> pb.PodSandboxStatus | None:
        if pod is None:
            try:
                pod = self.pods.get(pod_id)
            except NotFound:
                return None
        return pod_status(pod)

    def _publish(
        self,
        object_id: str,
        event_type: int,
        pod_id: str,
        pod: Pod | None = None,
        first: Container | None = None,
    ) -> None:
        """The statuses are built only for subscribers (kubelet's evented PLEG): without any, every create,
        start and stop would build the pod's and all its containers' statuses for nobody."""
        try:
            if not self.bus.subscriber_count:
                self.bus.emit(object_id, event_type)  # still counted in calyx's event metrics
                return
            self.bus.emit(
                object_id,
                event_type,
                self._pod_status(pod_id, pod),
                self.container_statuses(pod_id, first),
            )
        except Exception:
            log.exception("event not published", extra={"object_id": object_id})
