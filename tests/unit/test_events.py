"""The event bus: every subscriber gets every event in order; a slow one loses the oldest, never blocks."""

from __future__ import annotations

import threading

from cri import events
from cri.api import api_pb2 as pb


def drain(sub: events.Subscription) -> list[pb.ContainerEventResponse]:
    out = []
    while (event := sub.get(0)) is not None:
        out.append(event)
    return out


def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = events.EventBus()
    a, b = bus.subscribe(), bus.subscribe()
    for i, kind in enumerate([events.CREATED, events.STARTED, events.STOPPED, events.DELETED]):
        bus.emit(f"c{i}", kind)
    for sub in (a, b):
        got = drain(sub)
        assert [e.container_id for e in got] == ["c0", "c1", "c2", "c3"]
        assert [e.container_event_type for e in got] == [
            pb.CONTAINER_CREATED_EVENT,
            pb.CONTAINER_STARTED_EVENT,
            pb.CONTAINER_STOPPED_EVENT,
            pb.CONTAINER_DELETED_EVENT,
        ]
        assert all(e.created_at > 0 for e in got)


def test_a_slow_subscriber_drops_its_oldest_events_and_counts_them() -> None:
    bus = events.EventBus(capacity=5)
    slow, other = bus.subscribe(), bus.subscribe()
    before = events.DROPPED._value.get()
    for i in range(12):
        bus.emit(f"c{i}", events.CREATED)
    assert [e.container_id for e in drain(slow)] == [f"c{i}" for i in range(7, 12)]
    assert slow.dropped == 7 and other.dropped == 7
    assert events.DROPPED._value.get() - before == 14


def test_publishing_never_waits_for_a_subscriber() -> None:
    bus = events.EventBus(capacity=3)
    bus.subscribe()  # never read
    done = threading.Event()

    def publish_many() -> None:
        for i in range(10_000):
            bus.emit(f"c{i}", events.STARTED)
        done.set()

    thread = threading.Thread(target=publish_many)
    thread.start()
    thread.join(30)
    assert done.is_set()


def test_stream_ends_when_the_client_goes_away_and_unsubscribes() -> None:
    bus = events.EventBus()
    active = threading.Event()
    active.set()
    received: list[str] = []

    def consume() -> None:
        for event in bus.stream(active.is_set, poll=0.01):
            received.append(event.container_id)
            if len(received) == 2:
                active.clear()

    thread = threading.Thread(target=consume)
    thread.start()
    while bus.subscriber_count == 0:
        pass
    bus.emit("a", events.CREATED)
    bus.emit("b", events.STARTED)
    thread.join(10)
    assert not thread.is_alive()
    assert received == ["a", "b"]
    assert bus.subscriber_count == 0


def test_close_ends_every_stream() -> None:
    bus = events.EventBus()
    ended = threading.Event()

    def consume() -> None:
        for _ in bus.stream(lambda: True, poll=5):
            pass
        ended.set()

    thread = threading.Thread(target=consume)
    thread.start()
    while bus.subscriber_count == 0:
        pass
    bus.close()
    thread.join(10)
    assert ended.is_set()
