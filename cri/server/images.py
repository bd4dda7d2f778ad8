"""ImageService RPCs: PullImage, ImageStatus, ListImages, StreamImages, RemoveImage, ImageFsInfo.

Thin adapters over the ImageManager (cri/images/manager.py); ImageFsInfo also reports the containers'
writable layers (cri/containers/usage.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from calyx_base.errors import InvalidArgument
from cri.api import api_pb2 as pb
from cri.containers.subsystem import Containers
from cri.images.auth import Credentials
from cri.images.manager import ImageManager
from cri.images.model import Image

STREAM_BATCH = 100


def user_fields(user: str) -> dict[str, Any]:
    """``uid`` for a numeric USER ("1000", "1000:1000"), ``username`` for a name ("www-data[:group]")."""
    name = user.split(":", 1)[0]
    if not name:
        return {}
    if name.isdigit():
        return {"uid": pb.Int64Value(value=int(name))}
    return {"username": name}


def to_pb(image: Image) -> pb.Image:
    return pb.Image(
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        size=image.size,
        spec=pb.ImageSpec(image=image.id),
        pinned=image.pinned,
        **user_fields(image.user),
    )


def deadline_of(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > 10**8:
        return None
    return time.monotonic() + float(remaining)


def _fs(now: int, path: Path, used: int, inodes: int) -> pb.FilesystemUsage:
    return pb.FilesystemUsage(
        timestamp=now,
        fs_id=pb.FilesystemIdentifier(mountpoint=str(path)),
        used_bytes=pb.UInt64Value(value=used),
        inodes_used=pb.UInt64Value(value=inodes),
    )


class ImageRPCs:
    images: ImageManager
    containers: Containers

    @staticmethod
    def _name(spec: pb.ImageSpec) -> str:
        name = spec.image.strip()
        if not name:
            raise InvalidArgument("image name is empty")
        return name

    def PullImage(self, request: pb.PullImageRequest, context: grpc.ServicerContext) -> pb.PullImageResponse:
        creds = Credentials.from_auth_config(request.auth) if request.HasField("auth") else None
        image_id = self.images.pull(self._name(request.image), creds, deadline_of(context))
        return pb.PullImageResponse(image_ref=image_id)

    def ImageStatus(
        self, request: pb.ImageStatusRequest, context: grpc.ServicerContext
    ) -> pb.ImageStatusResponse:
        image = self.images.status(self._name(request.image))
        if image is None:
            return pb.ImageStatusResponse()
        info: dict[str, str] = {}
        if request.verbose:
            info["info"] = json.dumps(
                {
                    "id": image.id,
                    "manifestDigest": image.manifest_digest,
                    "layerDirs": [str(p) for p in image.layer_dirs],
                    "imageSpec": image.spec,
                    "pinned": image.pinned,
                },
                sort_keys=True,
            )
        return pb.ImageStatusResponse(image=to_pb(image), info=info)

    def ListImages(
        self, request: pb.ListImagesRequest, context: grpc.ServicerContext
    ) -> pb.ListImagesResponse:
        ref = request.filter.image.image.strip() if request.HasField("filter") else ""
        return pb.ListImagesResponse(images=[to_pb(i) for i in self.images.list(ref)])

    def StreamImages(
        self, request: pb.StreamImagesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamImagesResponse]:
        ref = request.filter.image.image.strip() if request.HasField("filter") else ""
        images = [to_pb(i) for i in self.images.list(ref)]
        for start in range(0, len(images), STREAM_BATCH):
            yield pb.StreamImagesResponse(images=images[start : start + STREAM_BATCH])

    def RemoveImage(
        self, request: pb.RemoveImageRequest, context: grpc.ServicerContext
    ) -> pb.RemoveImageResponse:
        self.images.remove(self._name(request.image))
        return pb.RemoveImageResponse()

    def ImageFsInfo(
        self, request: pb.ImageFsInfoRequest, context: grpc.ServicerContext
    ) -> pb.ImageFsInfoResponse:
        now = time.time_ns()
        mount, used, inodes = self.images.fs_usage()
        c_mount, c_used, c_inodes = self.containers.usage.usage()
        return pb.ImageFsInfoResponse(
            image_filesystems=[_fs(now, mount, used, inodes)],
            container_filesystems=[_fs(now, c_mount, c_used, c_inodes)],
        )
