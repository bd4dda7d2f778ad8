"""The container's root filesystem: an overlayfs over the image's layers with a private upper dir.

The upper and work dirs live in the container's own dir, so removing the container removes its
writable layer; the image layers below are shared and never written.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from cri.errors import Internal

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = _libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags), data.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise Internal(f"mount {fstype} on {target} failed: {os.strerror(err)} (options {data})")


def mount_fs(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
    _mount(source, str(target), fstype, flags, data)


def is_mounted(target: Path) -> bool:
    wanted = os.path.realpath(target)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == wanted:
            return True
    return False


def mount_overlay(
    layer_dirs: list[Path], container_dir: Path, target: Path, owner: tuple[int, int] | None = None
) -> None:
    """Mount the rootfs at ``target``; ``layer_dirs`` come bottom layer first (the images interface).

    ``owner`` (host uid, gid) is the container's root in a pod user namespace: the upper and work dirs
    become its own, so the root of the merged tree (the upper dir's inode) is writable by the container's
    root. Image files keep their host owners and show as nobody/nogroup inside (runc 1.1 has no idmapped
    mounts); world-readable and -executable files still work.
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
    lower = ":".join(str(p) for p in reversed(layer_dirs))
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    _mount("overlay", str(target), "overlay", 0, options)


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
