"""UpdatePodSandboxResources records kubelet's pod-level values; CheckpointContainer says why not."""

from __future__ import annotations

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests.net_fixtures import host_network_linux, pod_config, run_pod


def test_pod_resources_are_recorded_and_survive_a_restart(builtin_net) -> None:
    net = builtin_net()
    rt = net.daemon.runtime
    pod_id = run_pod(net.daemon, pod_config(linux=host_network_linux()))
    request = pb.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=pod_id[:12],  # a unique prefix names the pod, as everywhere
        overhead=pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20),
        resources=pb.LinuxContainerResources(
            cpu_quota=50000, cpu_period=100000, memory_limit_in_bytes=256 << 20
        ),
    )
    rt.UpdatePodSandboxResources(request, timeout=30)
    linux = net.records("pod")[pod_id]["linux"]
    assert linux["resources"]["cpu_quota"] == "50000"
    assert linux["resources"]["memory_limit_in_bytes"] == str(256 << 20)
    assert linux["overhead"]["memory_limit_in_bytes"] == str(64 << 20)
    net.daemon.restart()
    rt = net.daemon.runtime  # the restart closed the old channel
    assert net.records("pod")[pod_id]["linux"]["resources"]["cpu_quota"] == "50000"
    assert (
        rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.state
        == pb.SANDBOX_READY
    )

    with pytest.raises(grpc.RpcError) as err:
        rt.UpdatePodSandboxResources(pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id="f" * 64), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    with pytest.raises(grpc.RpcError) as err:
        rt.UpdatePodSandboxResources(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def test_checkpoint_container_is_unimplemented_with_its_reason(daemon) -> None:
    with pytest.raises(grpc.RpcError) as err:
        daemon.runtime.CheckpointContainer(
            pb.CheckpointContainerRequest(container_id="abc", location="/tmp/x")
        )
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "CRIU" in err.value.details()
    assert daemon.runtime.Version(pb.VersionRequest()).runtime_name == "calyx"
