"""OOMKilled under the systemd cgroup driver.

A container's scope is systemd's: once the OOM-killed process has gone, systemd removes the empty
scope, and with it the memory.events conmon reads to tell an OOM kill from any other SIGKILL (conmon
issue 426; critest's OOMKilled spec saw reason Error once in five runs on the node). Calyx does not
rely on that read: on cgroup v2 the pod slice counts its containers' OOM kills, and the slice stays.
These tests run on the host (v1 hybrid, a test systemd) and in the node lab (v2, systemd as PID 1),
where the race is real.
"""

from __future__ import annotations

from pathlib import Path

from cri.api import api_pb2 as pb
from cri.api import api_pb2_grpc as pb_grpc
from tests.image_fixtures import LoopbackRegistry
from tests.slice_pods import pod_in_a_slice
from tests.systemd_fixture import NamespacedSystemd
from tests.waiting import wait_for

MiB = 1024 * 1024
HOGS = 6


def wait_exit(rt: pb_grpc.RuntimeServiceStub, cid: str) -> pb.ContainerStatus:
    def exited() -> pb.ContainerStatus | None:
        st = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=60).status
        return st if st.state == pb.CONTAINER_EXITED else None

    st = wait_for(exited, f"container {cid} to exit", timeout=120)
    assert st is not None
    return st


def test_every_oom_kill_in_a_scope_is_reported_and_not_blamed_on_a_sibling(
    namespaced_systemd: NamespacedSystemd, image_registry: LoopbackRegistry, short_tmp: Path
) -> None:
    with pod_in_a_slice(namespaced_systemd, image_registry, short_tmp, qos="burstable") as slice_pod:
        rt = slice_pod.daemon.runtime
        no_limits = pb.LinuxContainerResources()
        bystander = slice_pod.start_container("bystander", ["sleep", "1000"], no_limits, pb.CONTAINER)
        limit = pb.LinuxContainerResources(memory_limit_in_bytes=32 * MiB)
        reasons = []
        for attempt in range(HOGS):
            cid = slice_pod.start_container(f"hog{attempt}", ["tail", "/dev/zero"], limit, pb.CONTAINER)
            st = wait_exit(rt, cid)
            reasons.append((st.exit_code, st.reason))
        assert reasons == [(137, "OOMKilled")] * HOGS

        # Killed by Calyx after all those OOM kills in its pod: a SIGKILL, not an OOM kill.
        rt.StopContainer(pb.StopContainerRequest(container_id=bystander, timeout=0), timeout=60)
        st = wait_exit(rt, bystander)
        assert (st.exit_code, st.reason) == (137, "Error")

        # A container that ends on its own with 137 was not OOM killed either (host PID namespace: a
        # namespace's init could not kill itself).
        cid = slice_pod.start_container("selfkill", ["sh", "-c", "kill -9 $$"], no_limits, pb.NODE)
        st = wait_exit(rt, cid)
        assert (st.exit_code, st.reason) == (137, "Error")
