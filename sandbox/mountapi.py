"""The new mount API through ctypes: detached clones of a tree with attributes (read-only, idmapped),
attached where they are wanted, and paths resolved without leaving a directory.

open_tree and move_mount need Linux 5.2, openat2 5.6, mount_setattr 5.12. The numbers below are the
generic syscall table's, shared by x86_64 and arm64. Errors are OSError with the errno and the path.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_OPENAT2 = 437
SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x00100000
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    """struct mount_attr (linux/mount.h)."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class _OpenHow(ctypes.Structure):
    """struct open_how (linux/openat2.h)."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _fail(call: str, where: str | Path) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call} {where}: {os.strerror(err)}")


def clone(
    path: str | Path = "",
    *,
    dirfd: int = AT_FDCWD,
    recursive: bool = False,
    read_only: bool = False,
    userns_fd: int | None = None,
) -> int:
    """A detached clone (a bind not attached anywhere) of ``path`` (relative to ``dirfd``; empty: the
    object ``dirfd`` refers to), read-only and/or idmapped through ``userns_fd`` as asked. The caller
    owns the returned fd; closing it without attaching drops the clone."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    flags |= AT_EMPTY_PATH if not str(path) else 0
    fd = _libc.syscall(
        ctypes.c_long(SYS_OPEN_TREE), ctypes.c_long(dirfd), str(path).encode(), ctypes.c_long(flags)
    )
    if fd < 0:
        raise _fail("open_tree", path or f"fd {dirfd}")
    attrs = (MOUNT_ATTR_RDONLY if read_only else 0) | (MOUNT_ATTR_IDMAP if userns_fd is not None else 0)
    if attrs:
        attr = _MountAttr(attrs, 0, 0, userns_fd or 0)
        setattr_flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
        rc = _libc.syscall(
            ctypes.c_long(SYS_MOUNT_SETATTR),
            ctypes.c_long(fd),
            b"",
            ctypes.c_long(setattr_flags),
            ctypes.byref(attr),
            ctypes.c_long(ctypes.sizeof(attr)),
        )
        if rc != 0:
            error = _fail("mount_setattr", path or f"fd {dirfd}")
            os.close(fd)
            raise error
    return fd


def attach(fd: int, target: Path) -> None:
    """Attach the detached mount ``fd`` (from ``clone``) at ``target``."""
    rc = _libc.syscall(
        ctypes.c_long(SYS_MOVE_MOUNT),
        ctypes.c_long(fd),
        b"",
        ctypes.c_long(AT_FDCWD),
        str(target).encode(),
        ctypes.c_long(MOVE_MOUNT_F_EMPTY_PATH),
    )
    if rc != 0:
        raise _fail("move_mount", target)


def open_beneath(dirfd: int, path: str) -> int:
    """An O_PATH fd of ``path`` resolved inside ``dirfd``: ``..`` above it, absolute symlinks and
    crossing into another mount fail with EXDEV instead of leaving the tree."""
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
    fd = _libc.syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_long(dirfd),
        path.encode(),
        ctypes.byref(how),
        ctypes.c_long(ctypes.sizeof(how)),
    )
    if fd < 0:
        raise _fail("openat2", path)
    return int(fd)
