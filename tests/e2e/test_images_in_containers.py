"""Images as containers use them: layer dirs become a working root filesystem, and an image a container
uses cannot be removed (through the real containers subsystem, over gRPC)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import Net
from tests.waiting import wait_for

cx = container_fixtures.cx


def test_whiteouts_and_opaque_dirs_take_effect_in_a_container(cx: Cx) -> None:
    pod = cx.pod()
    image = cx.image("calyx-test/multilayer:latest")
    cid = cx.run(pod, "layers", ["sleep", "1000"], image=image)
    assert cx.output(cid, "ls", "/data/dir").split() == ["new"]
    listing = cx.output(cid, "ls", "-A", "/data").split()
    assert "a" not in listing and "b" in listing and "hard" in listing
    assert cx.output(cid, "cat", "/data/link") == "b\n"
    assert cx.output(cid, "stat", "-c", "%u:%g %a", "/data/b").strip() == "1000:1000 600"
    cx.stop(cid)
    cx.remove(cid)


def test_an_image_in_use_cannot_be_removed(cx: Cx) -> None:
    pod = cx.pod()
    image = cx.image("calyx-test/user-name:latest")
    image_id = cx.daemon.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image))).image.id
    cid = cx.create(pod, cx.config("user", ["true"], image=image))
    for name in (image, image_id):
        request = pb.RemoveImageRequest(image=pb.ImageSpec(image=name))
        assert cx.code(cx.daemon.images.RemoveImage, request) == grpc.StatusCode.FAILED_PRECONDITION
    status = cx.daemon.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image_id)))
    assert status.image.id == image_id
    cx.remove(cid)
    cx.daemon.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)))
    gone = cx.daemon.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image_id)))
    assert not gone.HasField("image")


def test_the_images_of_a_create_in_progress_cannot_be_removed(
    builtin_net: Callable[..., Net], image_registry: LoopbackRegistry, short_tmp: Path
) -> None:
    """RemoveImage arriving while a CreateContainer is half-way (held at a failpoint after its images were
    found, before the container is listed) is refused for the container's image and for its image
    volume's; the create then completes with both (it used to lose them to the removal)."""
    held = short_tmp / "held"
    held.mkdir()
    step = "container.after_intent"
    registries = {image_registry.host: {"insecure": True}}
    net = builtin_net(
        env={"CALYX_FAILPOINTS": f"{step}=wait:{held}"}, config={"images": {"registries": registries}}
    )
    logs = short_tmp / "podlogs"
    logs.mkdir()
    cx = Cx(net, image_registry, logs)
    try:
        image, volume = cx.image(), cx.image("calyx-test/volume:latest")
        pod = cx.pod()
        mount = pb.Mount(container_path="/vol", image=pb.ImageSpec(image=volume), readonly=True)
        config = cx.config("held", ["sleep", "1000"], image=image, mounts=[mount])
        with ThreadPoolExecutor(1) as pool:
            created = pool.submit(cx.create, pod, config)
            try:
                wait_for(lambda: (held / f"{step}.reached").exists(), "the create to reach the failpoint")
                for ref in (image, volume):
                    request = pb.RemoveImageRequest(image=pb.ImageSpec(image=ref))
                    assert cx.code(cx.daemon.images.RemoveImage, request, timeout=60) == (
                        grpc.StatusCode.FAILED_PRECONDITION
                    ), ref
            finally:
                (held / f"{step}.go").touch()
            cid = created.result(timeout=120)
        cx.start(cid)
        assert "hello" in cx.output(cid, "ls", "/vol/content").split()
        cx.stop(cid)
        cx.remove(cid)
    finally:
        cx.cleanup()
