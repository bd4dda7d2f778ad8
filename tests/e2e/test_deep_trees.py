"""Deep trees through a real daemon: an image layer as deep as Calyx allows, and a container that grows
a chain of directories 5000 deep (paths far past PATH_MAX) in its writable layer with busybox sh.
Stats, removal of the container, the pod and the image, and a restart of the daemon all work."""

from __future__ import annotations

import grpc

from cri.api import api_pb2 as pb
from critest.images import Push, busybox_image, push_all
from tests import container_fixtures
from tests import hostile_layers as h
from tests.container_fixtures import Cx
from tests.waiting import wait_for

cx = container_fixtures.cx

MAX_DEPTH = 512  # the deepest a layer's tree may go (cri/images/tarbounds.py)
CHAIN = 5000
# 50 steps of 100 levels: mkdir -p and cd -P with short relative paths (a logical cd, or one cd per
# level, makes ash build or look up the whole path each time), then odd entries at the bottom.
GROW = (
    "p=d; i=1; while [ $i -lt 100 ]; do p=$p/d; i=$((i+1)); done;"
    f" n=0; while [ $n -lt {CHAIN // 100} ]; do mkdir -p $p && cd -P $p || exit 1; n=$((n+1)); done;"
    " echo bottom > bottom && chmod 555 .. && mkfifo fifo && ln -s / root && touch /grown; exec sleep 3600"
)


def test_deep_trees_in_layers_and_writable_layers_are_removed_and_the_daemon_restarts(cx: Cx) -> None:
    image = busybox_image(extra=[h.deep_chain(MAX_DEPTH - 1)])
    push_all(cx.registry.host, [Push("calyx-test/hostile-deep", ["latest"], image)])
    ref = cx.image("calyx-test/hostile-deep:latest")
    pod = cx.pod()
    cid = cx.run(pod, "deep", ["sh", "-c", GROW], image=ref)
    wait_for(lambda: cx.exec(cid, "test", "-e", "/grown").exit_code == 0, "the chain grown", timeout=300)
    assert cx.output(cid, "sh", "-c", "cd /" + "/d" * (MAX_DEPTH - 1) + " && cat bottom") == "bottom\n"

    stats = cx.rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=60).stats
    assert stats.writable_layer.inodes_used.value > CHAIN  # the walk went all the way down
    fs = cx.daemon.images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=60)
    assert fs.container_filesystems[0].inodes_used.value > CHAIN

    container_dir = cx.daemon.root / "containers" / cid
    cx.stop(cid)
    cx.remove(cid)
    assert not container_dir.exists()
    cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
    cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
    cx.daemon.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=120)
    assert list((cx.daemon.root / "images/layers").iterdir()) == []
    assert list((cx.daemon.root / "containers").iterdir()) == []

    cx.daemon.restart()
    status = cx.rt.Status(pb.StatusRequest(), timeout=30).status
    assert {c.type: c.status for c in status.conditions}["RuntimeReady"]
    missing = pb.ContainerStatusRequest(container_id=cid)
    assert cx.code(cx.rt.ContainerStatus, missing) == grpc.StatusCode.NOT_FOUND
