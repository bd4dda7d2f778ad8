"""CreateContainer/StartContainer racing StopPodSandbox and RemovePodSandbox of the same pod.

The container RPCs take the pod's lock, so each one happens wholly before or wholly after the pod's
stop/remove: a container made before is stopped and removed with the pod, a create after is refused
with a clear status (FailedPrecondition: pod not ready, or NotFound: pod gone). Whatever the
interleaving, nothing of the pod or its containers is left: no listed container, no conmon or container
process, no rootfs mount, no container dir, no cgroup (the ``cx`` teardown checks cgroups).
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx

cx = container_fixtures.cx

CLEAN_REFUSALS = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}
CREATORS = 4
ATTEMPTS = 6


def _processes_under(base: Path, daemon_pid: int) -> list[str]:
    """Processes but the daemon whose command line names a path under ``base`` (conmon, PID holders)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == daemon_pid:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(base) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.parametrize("teardown", ["stop", "remove"])
def test_creates_and_starts_racing_the_pods_teardown_leave_a_consistent_state(cx: Cx, teardown: str) -> None:
    image = cx.image()
    pod = cx.pod(host_network=False)
    first = cx.run(pod, "first", ["sleep", "1000"], image=image)
    in_flight = threading.Event()
    created: list[str] = []
    refused: list[grpc.StatusCode] = []
    unexpected: list[str] = []
    guard = threading.Lock()

    def creator(i: int) -> None:
        """Create and start containers until the pod's teardown refuses one (at most ATTEMPTS)."""
        for n in range(ATTEMPTS):
            config = cx.config(f"racer{i}-{n}", ["sleep", "1000"], image=image)
            try:
                cid = cx.create(pod, config)
                with guard:
                    created.append(cid)
                    if len(created) >= CREATORS:
                        in_flight.set()
                cx.start(cid)
            except grpc.RpcError as err:
                with guard:
                    if err.code() in CLEAN_REFUSALS:
                        refused.append(err.code())
                    else:
                        unexpected.append(f"{err.code()}: {err.details()}")
                return
        in_flight.set()

    threads = [threading.Thread(target=creator, args=(i,)) for i in range(CREATORS)]
    for t in threads:
        t.start()
    in_flight.wait(120)  # creates and starts are under way in every thread when the teardown comes
    cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
    if teardown == "remove":
        cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
    for t in threads:
        t.join(120)
    assert unexpected == [], "container RPCs racing the pod's teardown must fail cleanly or succeed"
    assert refused, "creates went on after the pod's teardown: some must have been refused"

    listed = {c.id: c.state for c in cx.rt.ListContainers(pb.ListContainersRequest()).containers}
    if teardown == "stop":
        # Every container made is listed, and none runs in the stopped pod (a late one stays CREATED
        # only if its create came before the stop; the stop killed it then: EXITED).
        assert set(listed) == {first, *created}
        assert all(state == pb.CONTAINER_EXITED for state in listed.values()), listed
        st = cx.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod[0])).status
        assert st.state == pb.SANDBOX_NOTREADY
        cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
        listed = {c.id: c.state for c in cx.rt.ListContainers(pb.ListContainersRequest()).containers}
    assert listed == {}
    assert list(cx.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items) == []
    base = cx.daemon.base
    assert cx.daemon.proc is not None
    assert _processes_under(base, cx.daemon.proc.pid) == []
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    assert [m for m in mounts if str(base) in m] == []
    containers_dir = cx.daemon.root / "containers"
    assert not containers_dir.exists() or list(containers_dir.iterdir()) == []
