"""StopContainer escalation (issue 13): kubelet stops a container with the pod's grace period and, when
it must be quicker (a pod deleted with a shorter grace, eviction, its own shutdown), stops it again with a
shorter timeout. The second call must act at once, as containerd's does, not wait behind the first one's
grace period; a hostile container (one that ignores SIGTERM) must not make that wait the whole period."""

from __future__ import annotations

import threading
import time

import grpc

from cri.api import api_pb2 as pb
from tests.e2e.test_streaming import Env, _env


def test_a_shorter_stop_overtakes_a_long_one_in_progress(builtin_net, image_registry, short_tmp) -> None:
    env: Env = _env(builtin_net, image_registry, short_tmp)
    cid = env.container(["sh", "-c", "trap '' TERM; while :; do sleep 1; done"])
    rt = env.daemon.runtime
    first: list[object] = []

    def long_stop() -> None:
        try:
            rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=600), timeout=700)
            first.append("ok")
        except grpc.RpcError as exc:
            first.append(exc)

    waiting = threading.Thread(target=long_stop, daemon=True)
    waiting.start()
    time.sleep(2)  # the first stop has sent SIGTERM (ignored) and waits out its 600 s
    assert waiting.is_alive()
    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
    status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
    assert status.state == pb.CONTAINER_EXITED
    assert status.exit_code == 137  # killed, not a graceful exit
    waiting.join(60)  # the long stop sees the exit and returns too
    assert first == ["ok"]
