"""The container's root filesystem: an overlayfs over the image's layers with a private upper dir.

The upper and work dirs live in the container's own dir, so removing the container removes its
writable layer; the image layers below are shared and never written.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from calyx_base.errors import Internal
from sandbox import mountapi, trees

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
log = logging.getLogger("cri.containers.rootfs")


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = _libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags), data.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise Internal(f"mount {fstype} on {target} failed: {os.strerror(err)} (options {data})")


def mount_fs(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
    _mount(source, str(target), fstype, flags, data)


def is_mounted(target: Path) -> bool:
    """Whether something is mounted at ``target``: asked of statx (reading /proc/self/mountinfo costs
    ~7 ms in the kernel on a node with ~900 mounts, and CreateContainer asked twice); the mount
    table is read only where statx cannot tell (kernels before 5.8)."""
    wanted = os.path.realpath(target)
    answer = trees.mount_root(wanted)
    if answer is not None:
        return answer
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == wanted:
            return True
    return False


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
    if is_mounted(target):
        return
    with idmapped_layers(list(reversed(layer_dirs)), user_ns) as lowers:
        options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
        _mount("overlay", str(target), "overlay", 0, options)


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
                    fds.append(idmapped_clone(layer, userns_fd))
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


def clone_tree(path: Path, recursive: bool = False) -> int:
    """A detached clone of the mount at ``path`` (a bind mount not attached anywhere yet, with its
    submounts when ``recursive``); the caller owns the returned fd."""
    return mountapi.clone(path, recursive=recursive)


def idmapped_clone(path: Path, userns_fd: int, recursive: bool = False) -> int:
    """A detached clone of the mount at ``path`` (with its submounts when ``recursive``) idmapped
    through the user namespace ``userns_fd``; the caller owns the returned fd."""
    return mountapi.clone(path, recursive=recursive, userns_fd=userns_fd)


def unmount(target: Path) -> None:
    """Detach whatever is mounted at ``target`` (all stacked mounts); a path not mounted is fine."""
    for _ in range(16):
        if not target.exists() or not is_mounted(target):
            return
        rc = _libc.umount2(str(target).encode(), MNT_DETACH)
        if rc != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
            raise Internal(f"umount {target} failed: {os.strerror(err)}")
