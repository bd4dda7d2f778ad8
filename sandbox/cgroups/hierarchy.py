"""Where the cgroup hierarchies are mounted, and whether this host runs cgroup v1, v2 or both.

Read from /proc/self/mountinfo rather than assumed, because hosts differ: a v1 host may co-mount
``cpu,cpuacct`` or keep them apart (this project's CI machines do), may lack ``hugetlb``, and a hybrid
host has a cgroup2 mount beside the v1 ones that carries no controllers. Both drivers map a cgroup path
(absolute inside the hierarchy, such as ``/kubepods/pod1``) to one directory per controller through this.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from sandbox import mounts

CGROUP_ROOT = Path("/sys/fs/cgroup")


class Mode(Enum):
    """Which cgroup version the resource controllers live in."""

    V1 = "v1"  # legacy: every controller in its own v1 hierarchy (a cgroup2 mount may exist, unused)
    V2 = "v2"  # unified: one cgroup2 hierarchy at /sys/fs/cgroup holds every controller


@dataclass(frozen=True)
class Mount:
    """One mounted hierarchy: where it is, which part of the hierarchy it shows, what it controls."""

    mountpoint: Path
    root: str  # the hierarchy path shown at the mountpoint ("/" unless a bind or cgroup namespace)
    controllers: frozenset[str]

    def dir_of(self, cgroup_path: str) -> Path:
        """The directory of ``cgroup_path`` (absolute in the hierarchy) under this mount."""
        path = "/" + cgroup_path.strip("/")
        root = self.root.rstrip("/")
        if root and (path == root or path.startswith(root + "/")):
            path = path[len(root) :] or "/"
        return self.mountpoint / path.lstrip("/") if path != "/" else self.mountpoint


@dataclass(frozen=True)
class Hierarchy:
    """The host's cgroup layout as seen by this process."""

    mode: Mode
    v1: dict[str, Mount] = field(default_factory=dict)  # controller or "name=systemd" -> its mount
    unified: Mount | None = None  # the cgroup2 mount (the only one in v2 mode)

    @property
    def controllers(self) -> frozenset[str]:
        """Resource controllers that can be used (v1: mounted; v2: enabled at the root)."""
        if self.mode is Mode.V2:
            return self.unified.controllers if self.unified else frozenset()
        return frozenset(name for name in self.v1 if not name.startswith("name="))

    def has(self, controller: str) -> bool:
        return controller in self.controllers

    def dirs(self, cgroup_path: str, named: bool = False) -> dict[str, Path]:
        """controller -> directory of ``cgroup_path``; co-mounted controllers share a directory.

        ``named`` adds the v1 named hierarchies (``name=systemd``) and the hybrid cgroup2 mount, which
        carry no resources but in which runc and systemd also create directories.
        """
        if self.mode is Mode.V2:
            assert self.unified is not None
            path = self.unified.dir_of(cgroup_path)
            return {c: path for c in sorted(self.unified.controllers)} | {"unified": path}
        dirs = {c: m.dir_of(cgroup_path) for c, m in self.v1.items() if named or not c.startswith("name=")}
        if named and self.unified is not None:
            dirs["unified"] = self.unified.dir_of(cgroup_path)
        return dirs

    def unique_dirs(self, cgroup_path: str, named: bool = False) -> list[Path]:
        """Every distinct directory of ``cgroup_path``, one per mounted hierarchy."""
        seen: dict[Path, None] = {}
        for path in self.dirs(cgroup_path, named).values():
            seen.setdefault(path, None)
        return list(seen)


_V1_OPTIONS = {"rw", "ro", "nosuid", "nodev", "noexec", "relatime", "noatime", "clone_children", "xattr"}


def detect(mountinfo: str | None = None) -> Hierarchy:
    """The layout of this process's cgroup mounts (the first mount of each hierarchy wins)."""
    v1: dict[str, Mount] = {}
    unified: Mount | None = None
    for info in mounts.mountinfo(mountinfo):
        fstype, root, opts, mountpoint = info.fstype, info.root, info.super_options, Path(info.mount_point)
        if fstype not in ("cgroup", "cgroup2"):
            continue
        if fstype == "cgroup2":
            if unified is None or mountpoint == CGROUP_ROOT:
                unified = Mount(mountpoint, root, frozenset(_v2_controllers(mountpoint)))
            continue
        names = {o for o in opts if o not in _V1_OPTIONS and not o.startswith("release_agent=")}
        if "none" in names:
            names.discard("none")
        mount = Mount(mountpoint, root, frozenset(names))
        for name in names:
            v1.setdefault(name, mount)
    if unified is not None and unified.mountpoint == CGROUP_ROOT and not v1:
        return Hierarchy(Mode.V2, {}, unified)
    if not v1:
        raise OSError(errno.ENOENT, "no cgroup hierarchy is mounted (read /proc/self/mountinfo)")
    return Hierarchy(Mode.V1, v1, unified)


def _v2_controllers(mountpoint: Path) -> set[str]:
    try:
        return set((mountpoint / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def rmdir_if_exists(path: Path) -> bool:
    """Remove one cgroup directory; True if it is gone. A busy (non-empty) cgroup stays: False."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return True


def is_populated(path: Path) -> bool:
    """Whether a cgroup directory holds processes or child cgroups."""
    try:
        if (path / "cgroup.procs").read_text().strip():
            return True
        return any(entry.is_dir() for entry in os.scandir(path))
    except FileNotFoundError:
        return False


def read_counter(path: Path, key: str) -> int | None:
    """``key``'s value in a flat keyed cgroup file ("key value" per line: memory.events,
    memory.oom_control); None when the file (or its cgroup) is gone or has no such key."""
    try:
        text = path.read_text()
    except OSError:  # ENOENT, and ENODEV from a cgroup removed while it was being read
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None
