"""A RemovePodSandbox the daemon died in (kill -9 at each of its steps) is finished by recovery.

The intent to remove is stored before the first side effect, so after the restart the pod (with its
container, cgroup parent, files, network) is gone without kubelet retrying the RPC, and the fault
audit (tests/fault_audit.py) finds nothing left: on the built-in network and on a CNI network
(bridge, host-local, portmap: their DEL must have run).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests.container_fixtures import Cx
from tests.fault_audit import audit, leftovers
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import Net

IMAGE = "calyx-test/busybox:latest"
POLITE = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
STEPS = ["pod.remove_after_intent", "pod.remove_after_containers", "pod.remove_after_dir"]


def _pod_with_container(cx: Cx) -> tuple[str, str]:
    """A pod with its own network namespace and cgroup parent, running one container."""
    pod = cx.pod(host_network=False)
    cx.image(IMAGE)
    return pod[0], cx.run(pod, "member", POLITE)


def _kill_in_remove_then_restart(cx: Cx, step: str) -> None:
    pod_id, _ctr = _pod_with_container(cx)
    cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    with pytest.raises(grpc.RpcError) as err:
        cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert cx.daemon.proc is not None and cx.daemon.proc.wait(30) == -signal.SIGKILL
    assert f"failpoint={step}" in cx.daemon.log()  # died at that step, not earlier

    cx.daemon.env.pop("CALYX_FAILPOINTS", None)
    cx.daemon.start()
    pods = cx.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
    assert [p.id for p in pods] == []
    assert cx.rt.ListContainers(pb.ListContainersRequest(), timeout=30).containers == []
    with pytest.raises(grpc.RpcError) as gone:
        cx.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=30)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert "finishing an interrupted pod removal" in cx.daemon.log()
    assert leftovers(cx) == []  # nothing on the machine (audit included), with no retry by kubelet
    for image in cx.daemon.images.ListImages(pb.ListImagesRequest(), timeout=30).images:
        cx.daemon.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image.id)), timeout=30)
    assert audit(cx) == []


def _cx(net: Net, registry: LoopbackRegistry, short_tmp: Path) -> Cx:
    logs = short_tmp / "podlogs"
    logs.mkdir()
    return Cx(net, registry, logs)


@pytest.mark.parametrize("step", STEPS)
def test_interrupted_remove_is_finished_at_restart(
    builtin_net: Callable[..., Net], image_registry: LoopbackRegistry, short_tmp: Path, step: str
) -> None:
    net = builtin_net(
        env={"CALYX_FAILPOINTS": f"{step}=kill"},
        config={"images": {"registries": {image_registry.host: {"insecure": True}}}},
    )
    cx = _cx(net, image_registry, short_tmp)
    try:
        _kill_in_remove_then_restart(cx, step)
    finally:
        cx.cleanup()


@pytest.mark.parametrize("step", STEPS)
def test_interrupted_remove_on_cni_is_finished_at_restart(
    cni_net: Callable[..., Net], image_registry: LoopbackRegistry, short_tmp: Path, step: str
) -> None:
    net = cni_net(start=False, env={"CALYX_FAILPOINTS": f"{step}=kill"})
    dropin = net.daemon.base / "calyx.d"
    dropin.mkdir(exist_ok=True)
    (dropin / "50-registry.toml").write_text(
        f'[images.registries."{image_registry.host}"]\ninsecure = true\n'
    )
    net.daemon.start()
    cx = _cx(net, image_registry, short_tmp)
    try:
        _kill_in_remove_then_restart(cx, step)
    finally:
        cx.cleanup()
