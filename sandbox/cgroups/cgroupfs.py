"""The cgroupfs driver: cgroups are plain directories Calyx and runc make under each hierarchy's mount.

Parents are absolute cgroup paths (kubelet's ``/kubepods/burstable/pod<uid>``); a container lives in
``<parent>/calyx-<id>`` and its conmon in ``<parent>/calyx-conmon-<id>``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

from calyx_base import poll
from sandbox.cgroups.driver import CONTAINER_PREFIX, MONITOR_PREFIX, CgroupDriver
from sandbox.cgroups.hierarchy import Mode, is_populated, rmdir_if_exists
from sandbox.cgroups.names import check_id, check_path

log = logging.getLogger("sandbox.cgroups")


class CgroupfsDriver(CgroupDriver):
    name = "cgroupfs"
    default_parent = "/calyx"

    def validate_parent(self, parent: str) -> None:
        check_path(parent)

    def parent_path(self, parent: str) -> str:
        return check_path(self.parent_or_default(parent))

    def container_cgroups_path(self, parent: str, container_id: str) -> str:
        return self.container_path(container_id, parent)

    def container_path(self, container_id: str, parent: str) -> str:
        return f"{self.parent_path(parent).rstrip('/')}/{CONTAINER_PREFIX}-{check_id(container_id)}"

    def monitor_cgroup(self, container_id: str, parent: str) -> str:
        return self.monitor_path(container_id, parent)

    def monitor_path(self, container_id: str, parent: str) -> str:
        return f"{self.parent_path(parent).rstrip('/')}/{MONITOR_PREFIX}-{check_id(container_id)}"

    # --- lifecycle -------------------------------------------------------------------------------------

    def _make(self, cgroup_path: str) -> None:
        """mkdir -p in every hierarchy; new cpuset dirs inherit their parent's cpus and mems (v1 leaves
        them empty, and an empty cpuset cannot take processes); v2 parents delegate their controllers."""
        if self.hierarchy.mode is Mode.V2:
            self._make_v2(cgroup_path)
            return
        for controller, directory in self.hierarchy.dirs(cgroup_path).items():
            if controller == "cpuset":
                self._make_cpuset(directory)
            else:
                directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _make_cpuset(directory: Path) -> None:
        missing = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for new in reversed(missing):
            with contextlib.suppress(FileExistsError):
                new.mkdir()
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not (new / name).read_text().strip():
                    (new / name).write_text((new.parent / name).read_text().strip())

    def _make_v2(self, cgroup_path: str) -> None:
        unified = self.hierarchy.unified
        assert unified is not None
        wanted = unified.controllers
        directory = unified.mountpoint
        for part in [p for p in cgroup_path.split("/") if p]:
            enabled = set((directory / "cgroup.subtree_control").read_text().split())
            available = set((directory / "cgroup.controllers").read_text().split())
            missing = (wanted & available) - enabled
            if missing:
                (directory / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(missing)))
            directory = directory / part
            directory.mkdir(exist_ok=True)

    def prepare_parent(self, parent: str, resources: dict[str, Any] | None = None) -> None:
        path = self.parent_path(parent)
        self._make(path)
        if resources:
            self._write_files(resources, path, path)
        log.debug("cgroup parent ready", extra={"cgroup_parent": path})

    def remove_parent(self, parent: str) -> bool:
        path = self.parent_path(parent)
        gone = True
        for directory in self.hierarchy.unique_dirs(path, named=True):
            if directory.exists() and is_populated(directory):
                gone = False
                continue
            gone = rmdir_if_exists(directory) and gone
        if not gone:
            log.info("cgroup parent not empty, kept", extra={"cgroup_parent": path})
        return gone

    def place_monitor(self, container_id: str, parent: str, pid: int) -> None:
        path = self.monitor_path(container_id, parent)
        self._make(path)
        for directory in self.hierarchy.unique_dirs(path):
            (directory / "cgroup.procs").write_text(str(pid))

    def remove_container(self, container_id: str, parent: str) -> None:
        """Remove the container's and its monitor's cgroups; what still runs in them (a conmon on its
        way out, leftovers of a crash) is SIGKILLed first, as the systemd driver's stop does."""
        left = self.all_pids(container_id, parent)  # one walk of one hierarchy: v1 puts a process in all
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:  # killed processes leave their cgroups a moment later (bounded; rmdir then tells)
            poll.until(lambda: not self.all_pids(container_id, parent), 5.0)
        for path in (self.container_path(container_id, parent), self.monitor_path(container_id, parent)):
            for directory in self.hierarchy.unique_dirs(path, named=True):
                _remove_tree(directory)
        if not parent:
            # No pod owns the default parent (runc made it): it goes with its last container.
            self.remove_parent("")

    # --- resources -------------------------------------------------------------------------------------

    def update(self, container_id: str, parent: str, oci: dict[str, Any]) -> None:
        self._write_files(oci, self.container_path(container_id, parent), container_id, update=True)


def _remove_tree(directory: Path) -> None:
    """rmdir a cgroup and the sub-cgroups a container may have made, deepest first; busy ones stay."""
    if not directory.is_dir():
        return
    for root, dirs, _files in os.walk(directory, topdown=False):
        for name in dirs:
            rmdir_if_exists(Path(root) / name)
    if not rmdir_if_exists(directory):
        log.warning("cgroup still busy, kept", extra={"cgroup": str(directory)})
