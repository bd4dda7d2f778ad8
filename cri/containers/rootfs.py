"""The container's root filesystem: an overlayfs over the image's layers with a private upper dir.

The upper and work dirs live in the container's own dir, so removing the container removes its
writable layer; the image layers below are shared and never written.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from calyx_base.errors import Internal
from sandbox import mounts

log = logging.getLogger("cri.containers.rootfs")


def mount_overlay(
    layer_dirs: list[Path],
    container_dir: Path,
    target: Path,
    owner: tuple[int, int] | None = None,
    user_ns: Path | None = None,
) -> None:
    """Mount the rootfs at ``target``; ``layer_dirs`` come bottom layer first (the images interface).

    In a pod user namespace, ``owner`` (host uid, gid) is the container's root: the upper and work dirs
    become its own, so the root of the merged tree (the upper dir's inode) is writable by it. With
    ``user_ns`` (the pod's pinned user namespace) the image layers are idmapped through it (see
    idmapped_layers), so image files owned by root show as root inside and copy-up writes the mapped
    ids; where the kernel or filesystem cannot idmap, they show as nobody/nogroup instead.
    """
    upper = container_dir / "upper"
    work = container_dir / "work"
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        for d in (upper, work):
            os.chown(d, *owner)
    if not layer_dirs:
        raise Internal("image has no layers to mount")
    if mounts.is_mounted(target):
        return
    with idmapped_layers(list(reversed(layer_dirs)), user_ns) as lowers:
        options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
        mounts.mount_fs("overlay", target, "overlay", 0, options)


@contextlib.contextmanager
def idmapped_layers(layers: list[Path], user_ns: Path | None) -> Iterator[list[str]]:
    """The lowerdir paths for ``layers``: as they are, or idmapped through ``user_ns``.

    runc 1.1 cannot make idmapped mounts, so Calyx makes them for the layers: each layer is cloned into
    a detached mount (open_tree OPEN_TREE_CLONE) that gets the user namespace's mapping
    (mount_setattr MOUNT_ATTR_IDMAP) and is handed to overlayfs as ``/proc/self/fd/N``. overlayfs keeps
    private clones of its layers, so once it is mounted the fds are closed and nothing but the overlay
    stays mounted: unmounting the rootfs is all the cleanup there is (no extra mount that a later
    ``rm -r`` of the container dir could descend into and delete image files through).
    """
    fds: list[int] = []
    try:
        if user_ns is not None:
            userns_fd = os.open(user_ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                for layer in layers:
                    fds.append(mounts.clone(layer, userns_fd=userns_fd))
            except OSError as exc:
                log.info("image layers not idmapped: files show as nobody/nogroup", extra={"error": str(exc)})
                for fd in fds:
                    os.close(fd)
                fds = []
            finally:
                os.close(userns_fd)
        yield [f"/proc/self/fd/{fd}" for fd in fds] if fds else [str(p) for p in layers]
    finally:
        for fd in fds:
            os.close(fd)
