"""One entry point for both cgroup versions: ``read_cgroup(dirs)``.

The cgroup driver answers ``cgroup_dirs(container_id, parent)`` with a controller -> directory map. On
v1 the keys are controller names; on v2 (unified) there is one directory, whatever its key. The version
is told by the directory's files, not by configuration, so a hybrid host reads its v1 controllers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from metrics import cgroup_v1, cgroup_v2
from metrics.readings import CgroupSample

V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio")
V1_ROOT = Path("/sys/fs/cgroup")


def is_v2(dirs: Mapping[str, Path]) -> bool:
    """v2 has one directory for every controller, and only v2 directories hold cgroup.controllers."""
    unique = set(dirs.values())
    return len(unique) == 1 and (next(iter(unique)) / "cgroup.controllers").exists()


def read_cgroup(dirs: Mapping[str, Path]) -> CgroupSample:
    """Sample the cgroup described by ``dirs`` (controller -> dir; v2: one dir)."""
    if is_v2(dirs):
        return cgroup_v2.read(next(iter(dirs.values())))
    return cgroup_v1.read(dirs)


def v1_dirs(relative: str, root: Path = V1_ROOT) -> dict[str, Path]:
    """controller -> dir of the v1 cgroup ``relative`` (e.g. "kubepods/pod1/calyx-<id>") in each
    hierarchy mounted under ``root``; a hierarchy that is not mounted is left out."""
    relative = relative.strip("/")
    dirs: dict[str, Path] = {}
    for controller in V1_CONTROLLERS:
        hierarchy = root / controller
        if hierarchy.is_dir():
            dirs[controller] = hierarchy / relative
    return dirs
