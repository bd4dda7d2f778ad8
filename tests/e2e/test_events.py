"""GetContainerEvents through real gRPC stream subscribers while pods and containers live and die.

Checks kubelet's evented-PLEG contract: CREATED/STARTED/STOPPED/DELETED for containers (by container
id) and pod sandboxes (by sandbox id), each with the pod's PodSandboxStatus and its containers'
ContainerStatus list, in order per object; a container that exits on its own is reported without any
client call poking it (the exit watcher); a subscriber that does not read holds nobody up.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx

cx = container_fixtures.cx

CREATED, STARTED = pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT
STOPPED, DELETED = pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT
WAIT = 60.0  # generous: waiting for an event to arrive, never a measured duration


class Subscriber:
    """A GetContainerEvents stream read by a thread into a queue (and a full log)."""

    def __init__(self, stub: Any) -> None:
        self.call = stub.GetContainerEvents(pb.GetEventsRequest(), timeout=600)
        self.queue: queue.Queue[pb.ContainerEventResponse] = queue.Queue()
        self.seen: list[pb.ContainerEventResponse] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.queue.put(event)
        except grpc.RpcError:
            pass

    def next_for(self, object_id: str, event_type: int, wait: float = WAIT) -> pb.ContainerEventResponse:
        """Read events (keeping them all) until ``object_id`` has an event of ``event_type``; queue.Empty
        when none came for ``wait`` seconds."""
        while True:
            event = self.queue.get(timeout=wait)
            self.seen.append(event)
            if event.container_id == object_id and event.container_event_type == event_type:
                return event

    def types_of(self, object_id: str) -> list[int]:
        return [e.container_event_type for e in self.seen if e.container_id == object_id]

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(10)


@pytest.fixture
def subscriber(cx: Cx) -> Iterator[Subscriber]:
    sub = Subscriber(cx.rt)
    try:
        yield sub
    finally:
        sub.close()


def wait_subscribed(cx: Cx, subscriber: Subscriber, stalled: Any) -> None:
    """A stream's handler subscribes when the daemon's thread gets to it, on a loaded host maybe after a
    pod made right after the call began, whose events it then never sees. Probe pods until each stream
    has had an event (the stalled one reads that one only)."""
    first: list[pb.ContainerEventResponse] = []
    reader = threading.Thread(target=lambda: first.append(next(stalled)), daemon=True)
    reader.start()
    for _ in range(20):
        probe = cx.pod()[0]
        try:
            subscriber.next_for(probe, CREATED, wait=5)  # not a deadline: an event missed, another probe
        except queue.Empty:
            continue
        reader.join(5)
        if first:
            return
    raise AssertionError("the event streams never saw a probe pod's events")


def statuses(event: pb.ContainerEventResponse) -> dict[str, pb.ContainerStatus]:
    return {s.id: s for s in event.containers_statuses}


def test_events_of_a_pod_and_its_containers_with_statuses_in_order(cx: Cx, subscriber: Subscriber) -> None:
    # A second subscriber that reads nothing until the end: nobody waits for it.
    stalled = cx.rt.GetContainerEvents(pb.GetEventsRequest(), timeout=600)
    wait_subscribed(cx, subscriber, stalled)
    pod_id, pod_cfg = cx.pod()
    image = cx.image()

    created = subscriber.next_for(pod_id, CREATED)
    assert created.pod_sandbox_status.id == pod_id
    assert created.pod_sandbox_status.state == pb.SANDBOX_READY
    assert created.pod_sandbox_status.metadata.name == pod_cfg.metadata.name
    assert list(created.containers_statuses) == []
    subscriber.next_for(pod_id, STARTED)

    # A long-running container, then one that exits on its own with code 3.
    keeper = cx.run((pod_id, pod_cfg), "keeper", ["sleep", "1000"], image=image)
    event = subscriber.next_for(keeper, STARTED)
    assert event.pod_sandbox_status.id == pod_id
    assert event.containers_statuses[0].id == keeper
    assert event.containers_statuses[0].state == pb.CONTAINER_RUNNING

    quits = ["sh", "-c", "until [ -e /tmp/go ]; do sleep 0.05; done; exit 3"]
    quitter = cx.create((pod_id, pod_cfg), cx.config("quitter", quits, image=image))
    event = subscriber.next_for(quitter, CREATED)
    assert statuses(event)[quitter].state == pb.CONTAINER_CREATED
    assert statuses(event)[keeper].state == pb.CONTAINER_RUNNING  # the pod's other container is listed
    cx.start(quitter)
    # It exits once told, after StartContainer (which would otherwise see a quick exit itself), and no
    # lifecycle RPC touches it: only the daemon's exit watcher can produce this event.
    cx.output(quitter, "touch", "/tmp/go")
    stopped = subscriber.next_for(quitter, STOPPED)
    own = stopped.containers_statuses[0]
    assert (own.id, own.state, own.exit_code, own.reason) == (quitter, pb.CONTAINER_EXITED, 3, "Error")
    latency_ms = (stopped.created_at - own.finished_at) / 1e6
    print(f"exit -> STOPPED event: {latency_ms:.0f} ms")  # reported, not asserted (no timed assertions)
    assert own.finished_at > 0 and stopped.created_at >= own.finished_at

    cx.stop(keeper, 0)
    event = subscriber.next_for(keeper, STOPPED)
    assert (event.containers_statuses[0].state, event.containers_statuses[0].exit_code) == (
        pb.CONTAINER_EXITED,
        137,
    )
    cx.remove(keeper)
    event = subscriber.next_for(keeper, DELETED)
    assert event.containers_statuses[0].id == keeper
    assert keeper not in [s.id for s in event.containers_statuses[1:]]
    assert quitter in statuses(event)

    cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    event = subscriber.next_for(pod_id, STOPPED)
    assert event.pod_sandbox_status.state == pb.SANDBOX_NOTREADY
    assert [s.id for s in event.containers_statuses] == [quitter]
    cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    subscriber.next_for(quitter, DELETED)  # the pod's removal removes its containers first
    event = subscriber.next_for(pod_id, DELETED)
    assert event.pod_sandbox_status.id == pod_id and list(event.containers_statuses) == []

    assert subscriber.types_of(pod_id) == [CREATED, STARTED, STOPPED, DELETED]
    assert subscriber.types_of(keeper) == [CREATED, STARTED, STOPPED, DELETED]
    assert subscriber.types_of(quitter) == [CREATED, STARTED, STOPPED, DELETED]

    # The stalled subscriber got the same events in the same order per object, once it reads.
    got: dict[str, list[int]] = {}
    for event in stalled:
        got.setdefault(event.container_id, []).append(event.container_event_type)
        if event.container_id == pod_id and event.container_event_type == DELETED:
            break
    stalled.cancel()
    for object_id in (pod_id, keeper, quitter):
        assert got[object_id] == [CREATED, STARTED, STOPPED, DELETED], object_id


def test_a_container_whose_monitor_was_killed_is_reported_stopped_when_it_ends(
    cx: Cx, subscriber: Subscriber
) -> None:
    """conmon killed: no exit file will come; the container's own end is still noticed and told."""
    import json
    import os
    import signal

    pod = cx.pod()
    cid = cx.run(pod, "orphan", ["sleep", "1000"])
    info = json.loads(cx.status(cid, verbose=True).info["info"])
    os.kill(info["monitorPid"], signal.SIGKILL)
    os.kill(info["pid"], signal.SIGKILL)
    event = subscriber.next_for(cid, STOPPED)
    own = event.containers_statuses[0]
    assert (own.state, own.exit_code) == (pb.CONTAINER_EXITED, 255)
    assert "monitor" in own.message
    cx.remove(cid)
    subscriber.next_for(cid, DELETED)
