"""Restart under load: 20 pods and 40 running containers survive a graceful restart and a SIGKILL.

After each restart every container is adopted, not restarted (same init PID with the same process
start time, same monitor), its log keeps growing (each container prints a line every 0.2 s through
conmon, which never stopped), and at the end all stop and remove, leaving nothing (tests/fault_audit).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cri.api import api_pb2 as pb
from cri.containers.procinfo import start_time
from tests.container_fixtures import Cx
from tests.fault_audit import audit, leftovers
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import Net

PODS = 20
PER_POD = 2
TICKER = ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
WAIT = 120.0  # for logs to grow: a bound on waiting, not a measured duration


def _identity(cx: Cx, cid: str) -> tuple[int, int | None, int]:
    info = json.loads(cx.status(cid, verbose=True).info["info"])
    pid = int(info["pid"])
    return pid, start_time(pid), int(info["monitorPid"])


def _log_sizes(paths: dict[str, Path]) -> dict[str, int]:
    return {cid: p.stat().st_size for cid, p in paths.items()}


def _wait_all_grow(paths: dict[str, Path]) -> None:
    before = _log_sizes(paths)
    deadline = time.monotonic() + WAIT
    pending = set(paths)
    while pending:
        assert time.monotonic() < deadline, f"logs that stopped growing: {sorted(pending)}"
        time.sleep(0.3)
        now = _log_sizes(paths)
        pending = {cid for cid in pending if now[cid] <= before[cid]}


def _check_adopted(cx: Cx, identities: dict[str, tuple[int, int | None, int]], logs: dict[str, Path]) -> None:
    listed = cx.rt.ListContainers(pb.ListContainersRequest(), timeout=60).containers
    assert len(listed) == PODS * PER_POD
    assert {c.id for c in listed} == set(identities)
    assert all(c.state == pb.CONTAINER_RUNNING for c in listed)
    for cid, identity in identities.items():
        assert _identity(cx, cid) == identity, f"container {cid} was restarted or lost its monitor"
    pods = cx.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=60).items
    assert len(pods) == PODS and all(p.state == pb.SANDBOX_READY for p in pods)
    _wait_all_grow(logs)
    assert audit(cx) == []


def test_twenty_pods_forty_containers_survive_restarts(
    builtin_net: Callable[..., Net],
    image_registry: LoopbackRegistry,
    short_tmp: Path,
) -> None:
    net = builtin_net(config={"images": {"registries": {image_registry.host: {"insecure": True}}}})
    logs_dir = short_tmp / "podlogs"
    logs_dir.mkdir()
    cx = Cx(net, image_registry, logs_dir)
    try:
        image = cx.image()
        pods = [cx.pod() for _ in range(PODS)]

        def start_two(pod: tuple[str, pb.PodSandboxConfig]) -> list[str]:
            return [cx.run(pod, f"ticker{i}", TICKER, image=image) for i in range(PER_POD)]

        with ThreadPoolExecutor(4) as pool:
            cids = [cid for pair in pool.map(start_two, pods) for cid in pair]
        logs = {cid: Path(cx.status(cid).status.log_path) for cid in cids}
        identities = {cid: _identity(cx, cid) for cid in cids}
        assert all(ident[1] is not None for ident in identities.values())
        _wait_all_grow(logs)

        assert cx.daemon.stop() == 0  # SIGTERM: a graceful stop leaves the containers running
        assert all(os.path.exists(f"/proc/{ident[0]}") for ident in identities.values())
        cx.daemon.start()
        _check_adopted(cx, identities, logs)

        cx.daemon.kill9()
        _wait_all_grow(logs)  # written by conmon while no daemon runs at all
        cx.daemon.start()
        _check_adopted(cx, identities, logs)

        for pod_id, _config in pods:
            cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        for cid in cids:
            st = cx.status(cid).status
            assert (st.state, st.exit_code) == (pb.CONTAINER_EXITED, 137)
        for pod_id, _config in pods:
            cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        cx.daemon.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
        assert leftovers(cx) == []
    finally:
        cx.cleanup()
