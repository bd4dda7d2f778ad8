"""ImageService RPCs: PullImage, ImageStatus, ListImages, StreamImages, RemoveImage, ImageFsInfo.

Thin adapters over ``runtime.images`` (cri/images/manager.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import grpc

from calyx_base.errors import InvalidArgument, Unavailable
from cri.api import api_pb2 as pb
from cri.images.auth import Credentials
from cri.images.manager import ImageManager
from cri.images.model import Image
from cri.runtime import Runtime
from metrics.fsusage import FsUsageCache

STREAM_BATCH = 100
# Writable layers change all the time and a walk costs time per file: kubelet's polls share a result.
WRITABLE_USAGE = FsUsageCache(ttl_seconds=5.0)


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


class ImageRPCs:
    runtime: Runtime

    @property
    def _images(self) -> ImageManager:
        images: ImageManager | None = getattr(self.runtime, "images", None)
        if images is None:
            raise Unavailable("the images subsystem is not running")
        return images

    @staticmethod
    def _name(spec: pb.ImageSpec) -> str:
        name = spec.image.strip()
        if not name:
            raise InvalidArgument("image name is empty")
        return name

    def PullImage(self, request: pb.PullImageRequest, context: grpc.ServicerContext) -> pb.PullImageResponse:
        creds = Credentials.from_auth_config(request.auth) if request.HasField("auth") else None
        image_id = self._images.pull(self._name(request.image), creds, deadline_of(context))
        return pb.PullImageResponse(image_ref=image_id)

    def ImageStatus(
        self, request: pb.ImageStatusRequest, context: grpc.ServicerContext
    ) -> pb.ImageStatusResponse:
        image = self._images.status(self._name(request.image))
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
        return pb.ListImagesResponse(images=[to_pb(i) for i in self._images.list(ref)])

    def StreamImages(
        self, request: pb.StreamImagesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamImagesResponse]:
        ref = request.filter.image.image.strip() if request.HasField("filter") else ""
        images = [to_pb(i) for i in self._images.list(ref)]
        for start in range(0, len(images), STREAM_BATCH):
            yield pb.StreamImagesResponse(images=images[start : start + STREAM_BATCH])

    def RemoveImage(
        self, request: pb.RemoveImageRequest, context: grpc.ServicerContext
    ) -> pb.RemoveImageResponse:
        self._images.remove(self._name(request.image))
        return pb.RemoveImageResponse()

    def ImageFsInfo(
        self, request: pb.ImageFsInfoRequest, context: grpc.ServicerContext
    ) -> pb.ImageFsInfoResponse:
        now = time.time_ns()
        mount, used, inodes = self._images.fs_usage()
        containers = getattr(self.runtime, "containers", None)
        usage = getattr(containers, "fs_usage", None)
        if callable(usage):
            c_mount, c_used, c_inodes = usage()
        else:
            c_mount = self.runtime.config.root / "containers"
            try:
                walked = WRITABLE_USAGE.get(str(c_mount))
                c_used, c_inodes = walked.used_bytes, walked.inodes_used
            except FileNotFoundError:
                c_used, c_inodes = 0, 0

        def fs(path: Any, used: int, inodes: int) -> pb.FilesystemUsage:
            return pb.FilesystemUsage(
                timestamp=now,
                fs_id=pb.FilesystemIdentifier(mountpoint=str(path)),
                used_bytes=pb.UInt64Value(value=used),
                inodes_used=pb.UInt64Value(value=inodes),
            )

        return pb.ImageFsInfoResponse(
            image_filesystems=[fs(mount, used, inodes)], container_filesystems=[fs(c_mount, c_used, c_inodes)]
        )
