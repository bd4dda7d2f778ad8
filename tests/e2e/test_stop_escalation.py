"""StopContainer escalation (issue 13): kubelet stops a container with the pod's grace period and, when
it must be quicker (a pod deleted with a shorter grace, eviction, its own shutdown), stops it again with a
shorter timeout. The second call must act at once, as containerd's does, not wait behind the first one's
grace period; a hostile container (one that ignores SIGTERM) must not make that wait the whole period."""

from __future__ import annotations

import threading

import grpc

from cri.api import api_pb2 as pb
from tests.e2e.test_streaming import Env, _env
from tests.waiting import wait_for


def test_a_shorter_stop_overtakes_a_long_one_in_progress(builtin_net, image_registry, short_tmp) -> None:
    env: Env = _env(builtin_net, image_registry, short_tmp)
    # SIGTERM is caught (and written down), never obeyed
    script = "trap 'echo term > /tmp/got' TERM; touch /tmp/ready; while :; do sleep 1; done"
    cid = env.container(["sh", "-c", script])
    rt = env.daemon.runtime

    def in_container(command: str) -> str:
        request = pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", command], timeout=30)
        return rt.ExecSync(request, timeout=60).stdout.decode()

    wait_for(lambda: in_container("test -e /tmp/ready && echo yes") == "yes\n", "the trap is set")
    first: list[object] = []

    def long_stop() -> None:
        try:
            rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=600), timeout=700)
            first.append("ok")
        except grpc.RpcError as exc:
            first.append(exc)

    waiting = threading.Thread(target=long_stop, daemon=True)
    waiting.start()
    # the first stop has sent SIGTERM (caught) and waits out its 600 s
    wait_for(lambda: in_container("cat /tmp/got 2>/dev/null || true") == "term\n", "SIGTERM caught")
    assert waiting.is_alive()
    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
    status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
    assert status.state == pb.CONTAINER_EXITED
    assert status.exit_code == 137  # killed, not a graceful exit
    waiting.join(60)  # the long stop sees the exit and returns too
    assert first == ["ok"]
