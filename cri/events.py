"""Container events for kubelet's evented PLEG (GetContainerEvents).

Subsystems publish a ``ContainerEventResponse`` when a container or pod sandbox is created, started,
stopped or deleted. Each subscriber has a bounded queue: a slow subscriber loses its oldest events (counted
in ``calyx_container_events_dropped_total``) and never blocks the runtime. Events of one object keep the
order they were published in, because publishing is serialised.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import Counter

from cri.api import api_pb2 as pb

log = logging.getLogger("cri.events")

PUBLISHED = Counter("calyx_container_events_total", "Container events published, by type.", ["type"])
DROPPED = Counter(
    "calyx_container_events_dropped_total", "Events a slow GetContainerEvents subscriber did not receive."
)

CREATED = pb.CONTAINER_CREATED_EVENT
STARTED = pb.CONTAINER_STARTED_EVENT
STOPPED = pb.CONTAINER_STOPPED_EVENT
DELETED = pb.CONTAINER_DELETED_EVENT


class Subscription:
    """One subscriber's bounded queue of events."""

    def __init__(self, bus: EventBus, capacity: int) -> None:
        self._bus = bus
        self._queue: collections.deque[pb.ContainerEventResponse] = collections.deque()
        self._capacity = capacity
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def offer(self, event: pb.ContainerEventResponse) -> None:
        with self._cond:
            if len(self._queue) >= self._capacity:
                self._queue.popleft()
                self.dropped += 1
                DROPPED.inc()
            self._queue.append(event)
            self._cond.notify()

    def get(self, timeout: float) -> pb.ContainerEventResponse | None:
        """The next event, or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait(timeout)
            return self._queue.popleft() if self._queue else None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._bus._unsubscribe(self)


class EventBus:
    def __init__(self, capacity: int = 1000) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self._capacity)
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, event: pb.ContainerEventResponse) -> None:
        with self._lock:
            PUBLISHED.labels(pb.ContainerEventType.Name(event.container_event_type)).inc()
            for sub in self._subscribers:
                sub.offer(event)

    def emit(
        self,
        object_id: str,
        event_type: int,
        pod_status: pb.PodSandboxStatus | None = None,
        container_statuses: list[pb.ContainerStatus] | None = None,
    ) -> None:
        """Publish an event about ``object_id`` (a container, or a pod sandbox for its own events)."""
        self.publish(
            pb.ContainerEventResponse(
                container_id=object_id,
                container_event_type=event_type,  # type: ignore[arg-type]
                created_at=time.time_ns(),
                pod_sandbox_status=pod_status,
                containers_statuses=container_statuses or [],
            )
        )

    def stream(self, is_active: Callable[[], bool], poll: float = 0.5) -> Iterator[pb.ContainerEventResponse]:
        """Events for one subscriber until ``is_active()`` turns false (the client went away)."""
        sub = self.subscribe()
        try:
            while is_active() and not sub.closed:
                event = sub.get(poll)
                if event is not None:
                    yield event
        finally:
            sub.close()

    # A subsystem: nothing to recover, subscribers are let go at close.
    def recover(self) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            subs = list(self._subscribers)
        for sub in subs:
            sub.close()

