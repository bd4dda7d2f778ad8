"""Every mount syscall Calyx makes, and the one reading of the mount table.

mount(2) for filesystems and binds (overlay root filesystems, tmpfs, namespace pins), umount2 for all
of them; the new mount API for detached clones of a tree with attributes (read-only, idmapped) attached
where they are wanted, and for paths resolved without leaving a directory; statx for "is this a mount
point", which is exact and costs microseconds where the mount table costs milliseconds. What is mounted
where is each owner's business (rootfs.py, idmapped.py, image_volumes.py, namespaces.py, shm.py).

open_tree and move_mount need Linux 5.2, openat2 5.6, mount_setattr 5.12, statx's mount-root attribute
5.8. The numbers below are the generic syscall table's, shared by x86_64 and arm64. Errors are OSError
with the errno and the path, except ``mount_fs`` and ``unmount``, whose callers hand the error on.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from calyx_base.errors import Internal
from sandbox.libc import LIBC, last_error

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
MAX_STACKED = 64  # umount2 calls for one target before giving up (a pin made twice is two)

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
AT_SYMLINK_NOFOLLOW = 0x100
AT_NO_AUTOMOUNT = 0x800
# struct statx: stx_attributes at byte 8, stx_attributes_mask at byte 56; the struct is 256 bytes.
STATX_SIZE = 256
STATX_ATTRIBUTES = 8
STATX_ATTRIBUTES_MASK = 56
STATX_ATTR_MOUNT_ROOT = 0x2000
MOUNTINFO = Path("/proc/self/mountinfo")


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


# --- the mount table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo."""

    mount_point: str
    root: str  # the part of the filesystem shown at the mount point
    fstype: str
    super_options: frozenset[str]
    optional: tuple[str, ...]  # propagation: shared:N, master:N...

    @property
    def shared(self) -> bool:
        return any(o.startswith("shared:") for o in self.optional)

    @property
    def slave(self) -> bool:
        return any(o.startswith("master:") for o in self.optional)


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return text.encode().decode("unicode_escape") if "\\" in text else text


def mountinfo(text: str | None = None) -> list[MountInfo]:
    """The mount table of this process (or the one ``text`` holds), in mount order."""
    rows = []
    for line in (MOUNTINFO.read_text() if text is None else text).splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 6:
            continue
        fstype, _source, super_options = [*right.split(), "", ""][:3]
        rows.append(
            MountInfo(
                _unescape(fields[4]),
                _unescape(fields[3]),
                fstype,
                frozenset(super_options.split(",")),
                tuple(fields[6:]),
            )
        )
    return rows


def mount_of(path: str) -> MountInfo:
    """The mount that contains ``path`` (the longest mount point prefix; the last one mounted wins)."""
    best: MountInfo | None = None
    for info in mountinfo():
        point = info.mount_point
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = info
    assert best is not None, "/ is always a mount"
    return best


def mount_root(name: str | Path, dir_fd: int = AT_FDCWD) -> bool | None:
    """statx's STATX_ATTR_MOUNT_ROOT of ``name`` (relative to ``dir_fd``), never following a final
    symlink: is it the root of a mount? None where the kernel does not say (before 5.8). Exact, bind
    mounts of the same filesystem included, in a few microseconds."""
    buf = ctypes.create_string_buffer(STATX_SIZE)
    flags = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT
    if LIBC.statx(dir_fd, os.fsencode(name), flags, 0, buf) != 0:
        return False if ctypes.get_errno() in (errno.ENOENT, errno.ENOTDIR) else None
    (attributes,) = struct.unpack_from("=Q", buf, STATX_ATTRIBUTES)
    (supported,) = struct.unpack_from("=Q", buf, STATX_ATTRIBUTES_MASK)
    if not supported & STATX_ATTR_MOUNT_ROOT:
        return None
    return bool(attributes & STATX_ATTR_MOUNT_ROOT)


def is_mounted(target: Path) -> bool:
    """Whether something is mounted at ``target``: asked of statx (reading /proc/self/mountinfo costs
    ~7 ms in the kernel on a node with ~900 mounts, and CreateContainer asked twice); the mount
    table is read only where statx cannot tell (kernels before 5.8)."""
    wanted = os.path.realpath(target)
    answer = mount_root(wanted)
    if answer is not None:
        return answer
    return any(m.mount_point == wanted for m in mountinfo())


def is_mount_point(path: Path) -> bool:
    """Whether the mount table lists ``path`` itself (as given, not resolved) as a mount point: a
    namespace pin is a file bind-mounted from /proc, which statx cannot tell from a plain file."""
    target = str(path)
    try:
        return any(m.mount_point == target for m in mountinfo())
    except OSError:
        return False


# --- mount(2), umount2(2) ----------------------------------------------------------------------------


class MountFailed(Internal):
    """mount(2) of a filesystem failed; ``errno`` says how (callers may retry another way)."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


def mount_fs(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
    """mount(2) a filesystem (overlay, tmpfs...) at ``target``; MountFailed names it and the options."""
    flags_arg = ctypes.c_ulong(flags)
    if LIBC.mount(source.encode(), str(target).encode(), fstype.encode(), flags_arg, data.encode()) != 0:
        err = ctypes.get_errno()
        raise MountFailed(f"mount {fstype} on {target} failed: {os.strerror(err)} (options {data})", err)


def bind(source: str, target: Path) -> None:
    """Bind ``source`` (a file or dir, e.g. /proc/PID/ns/net) on ``target`` (an existing one)."""
    if LIBC.mount(source.encode(), str(target).encode(), None, ctypes.c_ulong(MS_BIND), None) != 0:
        raise last_error("mount --bind", f"{source} on {target}")


def make_private(target: Path) -> None:
    """Make the mount at ``target`` private: nothing mounted below it propagates to its peers."""
    if LIBC.mount(None, str(target).encode(), None, ctypes.c_ulong(MS_PRIVATE), None) != 0:
        raise last_error("mount --make-private", target)


def unmount(target: Path) -> None:
    """Detach whatever is mounted at ``target``, every stacked mount of it; a path that is not mounted,
    or not there, is fine. Internal when the kernel refuses."""
    path = os.fsencode(str(target))
    for _ in range(MAX_STACKED):
        if LIBC.umount2(path, MNT_DETACH) == 0:
            continue
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        raise Internal(f"umount {target} failed: {os.strerror(err)}")


# --- the new mount API -------------------------------------------------------------------------------


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
    fd = LIBC.syscall(
        ctypes.c_long(SYS_OPEN_TREE), ctypes.c_long(dirfd), str(path).encode(), ctypes.c_long(flags)
    )
    if fd < 0:
        raise last_error("open_tree", path or f"fd {dirfd}")
    attrs = (MOUNT_ATTR_RDONLY if read_only else 0) | (MOUNT_ATTR_IDMAP if userns_fd is not None else 0)
    if attrs:
        attr = _MountAttr(attrs, 0, 0, userns_fd or 0)
        setattr_flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
        rc = LIBC.syscall(
            ctypes.c_long(SYS_MOUNT_SETATTR),
            ctypes.c_long(fd),
            b"",
            ctypes.c_long(setattr_flags),
            ctypes.byref(attr),
            ctypes.c_long(ctypes.sizeof(attr)),
        )
        if rc != 0:
            error = last_error("mount_setattr", path or f"fd {dirfd}")
            os.close(fd)
            raise error
    return fd


def attach(fd: int, target: Path) -> None:
    """Attach the detached mount ``fd`` (from ``clone``) at ``target``."""
    rc = LIBC.syscall(
        ctypes.c_long(SYS_MOVE_MOUNT),
        ctypes.c_long(fd),
        b"",
        ctypes.c_long(AT_FDCWD),
        str(target).encode(),
        ctypes.c_long(MOVE_MOUNT_F_EMPTY_PATH),
    )
    if rc != 0:
        raise last_error("move_mount", target)


def open_beneath(dirfd: int, path: str) -> int:
    """An O_PATH fd of ``path`` resolved inside ``dirfd``: ``..`` above it, absolute symlinks and
    crossing into another mount fail with EXDEV instead of leaving the tree."""
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
    fd = LIBC.syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_long(dirfd),
        path.encode(),
        ctypes.byref(how),
        ctypes.c_long(ctypes.sizeof(how)),
    )
    if fd < 0:
        raise last_error("openat2", path)
    return int(fd)
