"""Image volumes (CRI ``Mount.image``, kubelet's ImageVolume): a pulled image mounted read-only at a
container path, or one directory or file of it (``image_sub_path``).

kubelet pulls the image first; an image Calyx does not have is NOT_FOUND. The image's layers are staged
under the container dir: two or more as an overlay with no upper dir (read-only by construction), a
single one (overlayfs needs two lower dirs without an upper) as a read-only detached bind of its layer
dir; in a pod user namespace the layers are idmapped exactly as the container's rootfs layers are
(rootfs.idmapped_layers). A sub path is resolved inside the staged tree with openat2 RESOLVE_BENEATH
(``..`` above it, an absolute symlink, or a relative one that climbs out fail with EXDEV: refused as
INVALID_ARGUMENT) and the object found is bound on its own staging point, so runc never follows a path
of the image's making on the host.

runc binds the staged mounts into the container; its mount namespace keeps them, so the staging mounts
are released as soon as the container is created (like idmapped staging), and recovery releases any
that a crash left. The container record lists each volume's image id: the images subsystem refuses to
remove an image a container uses (ContainerRecords.uses_image), so the layer dirs under a container's
volume stay until the container is removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from calyx_base.errors import FailedPrecondition, Internal, InvalidArgument
from cri.api import api_pb2 as pb
from cri.containers import rootfs
from sandbox import mounts

log = logging.getLogger("cri.containers.image_volumes")

STAGING_DIR = "image-volumes"


class ImageView(Protocol):
    id: str
    repo_digests: list[str]
    layer_dirs: list[Path]


class ImageResolver(Protocol):
    def resolve(self, ref: str) -> Any: ...


@dataclass(frozen=True)
class ImageVolume:
    """One image volume of a container, as its record keeps it."""

    index: int  # position of its Mount in ContainerConfig.mounts
    container_path: str
    image: str  # as kubelet named it
    image_id: str
    image_ref: str  # a repo digest, else the id: what ContainerStatus reports
    sub_path: str

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ImageVolume:
        return cls(**{k: record[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Resolved:
    volume: ImageVolume
    layers: list[Path]  # bottom layer first


def resolve(mounts: Sequence[pb.Mount], images: ImageResolver) -> list[Resolved]:
    """The image volumes among ``mounts``: checked and their images found, before anything is made."""
    out = []
    for index, mount in enumerate(mounts):
        if not mount.image.image:
            continue
        where = f"image volume {mount.container_path}"
        if mount.host_path:
            raise InvalidArgument(f"{where}: a mount takes a host path or an image, not both")
        sub = mount.image_sub_path
        if sub.startswith("/") or "\0" in sub:
            raise InvalidArgument(
                f"{where}: image_sub_path {sub[:300]!r} must be a path relative to the image"
            )
        image = images.resolve(mount.image.image)  # NotFound: kubelet did not pull it
        if not image.layer_dirs:
            raise InvalidArgument(f"{where}: image {mount.image.image} has no layers to mount")
        ref = image.repo_digests[0] if image.repo_digests else image.id
        volume = ImageVolume(index, mount.container_path, mount.image.image, image.id, ref, sub)
        out.append(Resolved(volume, list(image.layer_dirs)))
    return out


def staging_dir(container_dir: Path) -> Path:
    return container_dir / STAGING_DIR


def stage(volumes: Sequence[Resolved], container_dir: Path, user_ns: Path | None) -> dict[int, str]:
    """Mount each volume under the container dir; {mount index: host path runc binds}. On failure what
    was staged so far stays for ``release`` (the caller's undo)."""
    if not volumes:
        return {}
    base = staging_dir(container_dir)
    base.mkdir(exist_ok=True)
    sources: dict[int, str] = {}
    for n, item in enumerate(volumes):
        root = base / str(n)
        root.mkdir(exist_ok=True)
        _mount_layers(item.layers, root, user_ns, container_dir)
        source = root
        if item.volume.sub_path.strip("/"):
            source = _bind_sub_path(root, item.volume, base / f"{n}.sub")
        sources[item.volume.index] = str(source)
    return sources


def _mount_layers(layers: list[Path], target: Path, user_ns: Path | None, staging: Path) -> None:
    if len(layers) > 1:
        rootfs.mount_layered(list(reversed(layers)), user_ns, target, mounts.MS_RDONLY, "", staging)
        return
    userns_fd = os.open(user_ns, os.O_RDONLY | os.O_CLOEXEC) if user_ns is not None else None
    try:
        try:
            fd = mounts.clone(layers[0], read_only=True, userns_fd=userns_fd)
        except OSError as exc:
            if userns_fd is None:
                raise Internal(f"image volume layer {layers[0]}: {exc.strerror}") from None
            log.info(
                "image volume layer not idmapped: files show as nobody/nogroup", extra={"error": str(exc)}
            )
            fd = mounts.clone(layers[0], read_only=True)
    finally:
        if userns_fd is not None:
            os.close(userns_fd)
    try:
        mounts.attach(fd, target)
    except OSError as exc:
        raise Internal(f"image volume layer {layers[0]}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _bind_sub_path(root: Path, volume: ImageVolume, target: Path) -> Path:
    """Bind the object ``volume.sub_path`` names inside the staged image at ``target``."""
    where = f"image volume {volume.container_path}: image_sub_path {volume.sub_path[:300]!r}"
    dirfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = mounts.open_beneath(dirfd, volume.sub_path.strip("/"))
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise InvalidArgument(f"{where} leads out of image {volume.image}") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InvalidArgument(f"{where} does not exist in image {volume.image}") from None
        if exc.errno == errno.ELOOP:
            raise InvalidArgument(f"{where} is a symlink loop in image {volume.image}") from None
        if exc.errno == errno.ENOSYS:
            raise FailedPrecondition(f"{where}: this kernel has no openat2 (Linux 5.6)") from None
        raise Internal(f"{where}: {exc.strerror}") from None
    finally:
        os.close(dirfd)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            target.mkdir(exist_ok=True)
        elif stat.S_ISREG(mode):
            target.touch(exist_ok=True)
        else:
            raise InvalidArgument(f"{where} is neither a directory nor a regular file")
        clone = mounts.clone(dirfd=fd)
        try:
            mounts.attach(clone, target)
        finally:
            os.close(clone)
    except OSError as exc:
        raise Internal(f"{where}: binding it failed: {exc.strerror}") from None
    finally:
        os.close(fd)
    return target


def release(container_dir: Path) -> None:
    """Unmount and remove every staging mount of the container (sub path binds first). Raises when one
    stays mounted, so that nothing removes the container dir through it."""
    base = staging_dir(container_dir)
    if not base.is_dir():
        return
    for entry in sorted(base.iterdir(), key=lambda p: p.name, reverse=True):  # "0.sub" before "0"
        mounts.unmount(entry)
        if mounts.is_mounted(entry):
            raise Internal(f"image volume staging mount {entry} is still mounted")
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir() and not entry.is_symlink():
                entry.rmdir()
            else:
                entry.unlink()
    with contextlib.suppress(FileNotFoundError):
        base.rmdir()
    log.debug("image volume staging mounts released", extra={"container_id": container_dir.name})
