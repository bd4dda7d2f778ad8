"""The container's root filesystem: an overlayfs over the image's layers with a private upper dir.

The upper and work dirs live in the container's own dir, so removing the container removes its
writable layer; the image layers below are shared and never written.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from calyx_base.errors import FailedPrecondition, Internal
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
    mount_layered(
        list(reversed(layer_dirs)), user_ns, target, 0, f",upperdir={upper},workdir={work}", container_dir
    )


class _Kernel:
    """What this kernel's overlayfs was found to take. Before Linux 6.15 it refuses (EINVAL) a lower
    layer that is a detached mount (clone_private_mount wants one of the caller's mount namespace):
    Debian 12's 6.1 does. Learned at the first refusal, so later mounts attach their layers at once."""

    attach_layers = False


def mount_layered(
    layers: list[Path], user_ns: Path | None, target: Path, flags: int, options: str, staging: Path
) -> None:
    """Mount an overlay of ``layers`` (top first) at ``target`` with ``flags`` and ``options`` after the
    lowerdir, the layers idmapped through ``user_ns`` (see idmapped_layers). Where the kernel refuses
    detached layers, they are attached under ``staging`` for the mount (see attached_layers)."""

    def mount(lowers: list[str]) -> None:
        mounts.mount_fs("overlay", target, "overlay", flags, f"lowerdir={':'.join(lowers)}{options}")

    if user_ns is None:
        mount([str(p) for p in layers])
        return
    if not _Kernel.attach_layers:
        with idmapped_layers(layers, user_ns) as lowers:
            try:
                mount(lowers)
                return
            except mounts.MountFailed as exc:
                detached = all(lower.startswith("/proc/self/fd/") for lower in lowers)
                if exc.errno != errno.EINVAL or not detached:
                    raise
        log.info("overlayfs refuses detached layers here: idmapped layers are attached for it")
        _Kernel.attach_layers = True
    with attached_layers(layers, user_ns, staging / LAYERS_DIR) as lowers:
        try:
            mount(lowers)
        except mounts.MountFailed as exc:
            if exc.errno != errno.EINVAL:
                raise
            raise FailedPrecondition(
                f"this kernel's overlayfs ({os.uname().release}) refuses the image's layers idmapped for the "
                f"pod's user namespace ({exc}); run the pod without a user namespace"
            ) from None


LAYERS_DIR = "idmapped-layers"


@contextlib.contextmanager
def attached_layers(layers: list[Path], user_ns: Path, base: Path) -> Iterator[list[str]]:
    """The idmapped clones of ``layers`` attached at ``base/<n>``, for kernels whose overlayfs takes
    attached layers only. ``base`` is made a private mount first, so the clones never propagate to the
    host's peer mounts (under systemd every mount is shared). overlayfs keeps private clones of its
    layers, so on exit the staging mounts are detached and ``base`` removed (release_attached), whatever
    happened; a crash in between leaves them to the container dir's removal, which releases them too."""
    release_attached(base)  # a crash's leftovers
    base.mkdir()
    try:
        try:
            mounts.bind(str(base), base)
            mounts.make_private(base)
        except OSError as exc:
            raise Internal(f"cannot make the private staging mount {base}: {exc.strerror}") from None
        with idmapped_layers(layers, user_ns) as lowers:
            paths = [str(base / str(n)) for n in range(len(lowers))]
            for lower, path in zip(lowers, paths, strict=True):
                Path(path).mkdir()
                try:
                    if lower.startswith("/proc/self/fd/"):
                        mounts.attach(int(lower.rsplit("/", 1)[1]), Path(path))
                    else:  # not idmapped after all (see idmapped_layers): bound as it is
                        mounts.bind(lower, Path(path))
                except OSError as exc:
                    raise Internal(f"attaching image layer {lower} at {path}: {exc.strerror}") from None
        yield paths
    finally:
        release_attached(base)


def release_attached(base: Path) -> None:
    """Detach the staging mounts of attached_layers under ``base`` and remove it (missing: fine)."""
    if not base.is_dir():
        return
    mounts.unmount(base)  # MNT_DETACH: the layers attached below it go with it
    for entry in base.iterdir():
        mounts.unmount(entry)
        entry.rmdir()
    base.rmdir()


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
