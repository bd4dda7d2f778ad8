"""Images as containers use them: layer dirs become a working root filesystem, and an image a container
uses cannot be removed (through the real containers subsystem, over gRPC)."""

from __future__ import annotations

import grpc

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx

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
