"""Unfiltered List replies are reused while nothing changed (cri/pbcache.py LastListing): every change
must still show at once, including an exit nobody asked about, which the listing itself picks up."""

from __future__ import annotations

import time

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx

cx = container_fixtures.cx


def _containers(cx: Cx) -> dict[str, int]:
    return {c.id: c.state for c in cx.rt.ListContainers(pb.ListContainersRequest()).containers}


def _pods(cx: Cx) -> dict[str, int]:
    return {p.id: p.state for p in cx.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items}


def test_unfiltered_lists_follow_every_change(cx: Cx) -> None:
    pod = cx.pod()
    sleeper = cx.run(pod, "sleeper", ["sleep", "1000"])
    assert _containers(cx) == _containers(cx) == {sleeper: pb.CONTAINER_RUNNING}
    assert _pods(cx) == {pod[0]: pb.SANDBOX_READY}

    # Exits on its own: no RPC changes it, the next listing must see it.
    brief = cx.run(pod, "brief", ["sh", "-c", "until [ -e /tmp/go ]; do sleep 0.05; done; exit 3"])
    assert _containers(cx)[brief] == pb.CONTAINER_RUNNING
    cx.output(brief, "touch", "/tmp/go")
    deadline = time.monotonic() + 60
    while _containers(cx)[brief] != pb.CONTAINER_EXITED:
        assert time.monotonic() < deadline, "the exit never showed in ListContainers"
        time.sleep(0.1)
    assert cx.status(brief).status.exit_code == 3

    cx.stop(sleeper)
    assert _containers(cx) == {sleeper: pb.CONTAINER_EXITED, brief: pb.CONTAINER_EXITED}
    cx.remove(brief)
    assert _containers(cx) == {sleeper: pb.CONTAINER_EXITED}

    cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
    assert _pods(cx) == {pod[0]: pb.SANDBOX_NOTREADY}
    cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
    assert _pods(cx) == {} and _containers(cx) == {}
