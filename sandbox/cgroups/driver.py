"""What every cgroup driver offers the rest of Calyx, and the parts they share.

The pods subsystem prepares and removes a pod's parent cgroup; the containers subsystem asks for the OCI
``linux.cgroupsPath`` to hand to runc, places each conmon, applies UpdateContainerResources (as OCI
``linux.resources``) and finds the cgroup directories for stats. Only the naming and the way cgroups
are created differ between the drivers, so the rest lives here.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from calyx_base.errors import FailedPrecondition
from sandbox.cgroups import resources as res
from sandbox.cgroups.hierarchy import Hierarchy, Mode, detect, read_counter
from sandbox.cgroups.names import check_id

log = logging.getLogger("sandbox.cgroups")

CONTAINER_PREFIX = "calyx"
MONITOR_PREFIX = "calyx-conmon"


class CgroupDriver(ABC):
    """The agreed interface of a cgroup driver. An empty ``parent`` means the driver's default parent."""

    name: str
    default_parent: str

    def __init__(
        self, hierarchy: Hierarchy | None = None, pids_limit: int = 0, default_parent: str = ""
    ) -> None:
        self.hierarchy = hierarchy or detect()
        self.pids_limit = pids_limit
        if default_parent:
            self.validate_parent(default_parent)
            self.default_parent = default_parent

    # --- subsystem ------------------------------------------------------------------------------------

    def recover(self) -> None:
        """Nothing is stored: cgroups are named after the ids the pods and containers keep."""
        log.info(
            "cgroup driver ready",
            extra={
                "driver": self.name,
                "mode": self.hierarchy.mode.value,
                "controllers": ",".join(sorted(self.hierarchy.controllers)),
            },
        )

    def close(self) -> None:  # noqa: B027 - drivers with a connection override it
        """Nothing runs in the background."""

    # --- naming ----------------------------------------------------------------------------------------

    @abstractmethod
    def validate_parent(self, parent: str) -> None:
        """InvalidArgument (naming ``parent``) unless it is in this driver's syntax; "" is the default."""

    def parent_or_default(self, parent: str) -> str:
        if not parent:
            return self.default_parent
        self.validate_parent(parent)
        return parent

    @abstractmethod
    def parent_path(self, parent: str) -> str:
        """The cgroup path (absolute in each hierarchy) of ``parent``."""

    @abstractmethod
    def container_cgroups_path(self, parent: str, container_id: str) -> str:
        """The OCI ``linux.cgroupsPath`` for runc (systemd: ``slice:prefix:name``; cgroupfs: a path)."""

    @abstractmethod
    def container_path(self, container_id: str, parent: str) -> str:
        """The cgroup path of the container (where runc puts it, given container_cgroups_path)."""

    @abstractmethod
    def monitor_cgroup(self, container_id: str, parent: str) -> str:
        """Where the container's conmon goes (systemd: a scope unit name; cgroupfs: a cgroup path)."""

    @abstractmethod
    def monitor_path(self, container_id: str, parent: str) -> str:
        """The cgroup path of the monitor's cgroup."""

    # --- lifecycle -------------------------------------------------------------------------------------

    @abstractmethod
    def prepare_parent(self, parent: str, resources: dict[str, Any] | None = None) -> None:
        """Make sure the pod's parent cgroup exists (with ``resources``, OCI form, if given)."""

    @abstractmethod
    def remove_parent(self, parent: str) -> bool:
        """Remove the pod's parent cgroup if it is empty; True if it is gone (or never existed)."""

    @abstractmethod
    def place_monitor(self, container_id: str, parent: str, pid: int) -> None:
        """Move a running conmon (``pid``, as this process sees it) into its own cgroup."""

    @abstractmethod
    def remove_container(self, container_id: str, parent: str) -> None:
        """Remove the container's and its monitor's cgroups after runc delete (cleans crash leftovers)."""

    # --- resources -------------------------------------------------------------------------------------

    @abstractmethod
    def update(self, container_id: str, parent: str, oci: dict[str, Any]) -> None:
        """Apply new limits (OCI ``linux.resources``) to a running container's cgroup."""

    # Names of the container and monitor cgroups directly below a parent; group 1 is the container id.
    CHILD_NAME = re.compile(rf"{MONITOR_PREFIX}-([0-9a-f]{{64}})|{CONTAINER_PREFIX}-([0-9a-f]{{64}})")

    def container_ids_under(self, parent: str) -> set[str]:
        """Ids of the container and monitor cgroups directly below ``parent``, in any hierarchy (for
        recovery: those of containers the store does not know are leftovers)."""
        ids: set[str] = set()
        for directory in self.hierarchy.unique_dirs(self.parent_path(parent), named=True):
            try:
                names = os.listdir(directory)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                match = self.CHILD_NAME.fullmatch(name)
                if match and (directory / name).is_dir():
                    ids.add(match.group(1) or match.group(2))
        return ids

    def all_pids(self, container_id: str, parent: str) -> list[int]:
        """Every process in the container's cgroup and in its monitor's (conmon's) cgroup."""
        pids = self.pids(container_id, parent)
        dirs = self.hierarchy.dirs(self.monitor_path(check_id(container_id), parent), named=True)
        for source in self.PID_SOURCES:
            directory = dirs.get(source)
            if directory is not None and directory.is_dir():
                return pids + _procs_below(directory)
        return pids

    def cgroup_dirs(self, container_id: str, parent: str) -> dict[str, Path]:
        """Where the container's cgroup is, for stats.

        v1: controller name -> directory (co-mounted controllers share one). v2: ``{"unified": dir}``,
        the one directory.
        """
        path = self.container_path(check_id(container_id), parent)
        if self.hierarchy.mode is Mode.V2:
            return {"unified": self.hierarchy.dirs(path)["unified"]}
        return self.hierarchy.dirs(path)

    def stat_dirs(self, container_id: str, parent: str) -> tuple[dict[str, Path], str]:
        """(controller -> dir, cgroup path) where stats read the container: cgroup_dirs, plus on a
        hybrid v1 host its dir in the cgroup2 mount (``unified``, for pressure stall information)."""
        path = self.container_path(container_id, parent)
        return self._with_unified(self.cgroup_dirs(container_id, parent), path), path

    def pod_stat_dirs(self, parent: str) -> tuple[dict[str, Path], str]:
        """(controller -> dir, cgroup path) where stats read a pod: its parent cgroup (v2: the one dir)."""
        path = self.parent_path(parent)
        dirs = self.hierarchy.dirs(path)
        if "unified" in dirs:  # v2: the one directory
            return {"unified": dirs["unified"]}, path
        return self._with_unified(dirs, path), path

    def _with_unified(self, dirs: dict[str, Path], path: str) -> dict[str, Path]:
        if "unified" in dirs:
            return dirs
        unified = self.hierarchy.dirs(path, named=True).get("unified")
        return {**dirs, "unified": unified} if unified is not None else dirs

    # --- OOM kills -------------------------------------------------------------------------------------

    def container_oom_kills(self, container_id: str, parent: str) -> int | None:
        """How many processes the kernel's OOM killer killed in the container's cgroup; None once the
        cgroup is gone (the systemd driver's scope goes as soon as it is empty)."""
        return self._oom_kills(self.container_path(check_id(container_id), parent))

    def parent_oom_kills(self, parent: str) -> int | None:
        """The OOM kills counted in a pod's parent cgroup, which outlives its containers' cgroups. On
        cgroup v2 the count includes every descendant's kills (unless cgroup2 is mounted with
        memory_localevents); on v1 it is the parent's own."""
        return self._oom_kills(self.parent_path(parent))

    def _oom_kills(self, cgroup_path: str) -> int | None:
        directory = self.hierarchy.dirs(cgroup_path).get("memory")
        if directory is None:
            return None
        name = "memory.events" if self.hierarchy.mode is Mode.V2 else "memory.oom_control"
        return read_counter(directory / name, "oom_kill")

    # --- processes -------------------------------------------------------------------------------------

    # Hierarchies whose membership nobody rewrites behind runc's back, best first. (systemd on v1
    # migrates a scope's processes out of controllers it does not enable for the unit, e.g. devices,
    # which is the one ``runc kill --all`` reads: that kill then signals nobody.)
    PID_SOURCES = ("name=systemd", "pids", "memory", "cpu", "unified")

    def pids(self, container_id: str, parent: str) -> list[int]:
        """Every process in the container's cgroup and its sub-cgroups."""
        dirs = self.hierarchy.dirs(self.container_path(check_id(container_id), parent), named=True)
        for source in self.PID_SOURCES:
            directory = dirs.get(source)
            if directory is not None and directory.is_dir():
                return _procs_below(directory)
        return []

    def kill_all(self, container_id: str, parent: str, sig: int = signal.SIGKILL) -> int:
        """Signal every process of the container (for a container in a shared PID namespace, where
        killing its init leaves the rest running); frozen meanwhile so none can fork away. Returns how
        many processes were signalled."""
        path = self.container_path(check_id(container_id), parent)
        freezer = self._freezer(path)
        if freezer is not None:
            _set_frozen(freezer, True)
        try:
            count = 0
            for pid in self.pids(container_id, parent):
                try:
                    os.kill(pid, sig)
                    count += 1
                except ProcessLookupError:
                    pass
            return count
        finally:
            if freezer is not None:
                _set_frozen(freezer, False)

    def repair_placement(self, container_id: str, parent: str) -> list[str]:
        """Move the container's processes back into its own cgroup in every v1 hierarchy where they
        sit in an ancestor instead; returns the controllers repaired.

        Call it after ``runc create``. Measured here (runc 1.1.5 --systemd-cgroup, systemd 252, v1):
        the container's init ends up in the pod slice's devices cgroup ("a *:* rwm") instead of its
        scope's, so runc's device allow-list does not confine it and ``runc kill --all`` finds nobody.
        Once moved back, the placement survives SetUnitProperties and daemon-reload.
        """
        if self.hierarchy.mode is Mode.V2:
            return []
        path = self.container_path(check_id(container_id), parent)
        dirs = self.hierarchy.dirs(path)
        repaired: set[str] = set()
        for pid in self.pids(container_id, parent):
            try:
                current = _cgroup_paths(pid)
            except FileNotFoundError:
                continue
            for controller, directory in dirs.items():
                where = current.get(controller)
                if where is None or where == path or not path.startswith(where.rstrip("/") + "/"):
                    continue
                if not directory.is_dir():
                    continue
                with contextlib.suppress(ProcessLookupError):
                    (directory / "cgroup.procs").write_text(str(pid))
                    repaired.add(controller)
        if repaired:
            log.info(
                "container processes moved back into their cgroup",
                extra={"container_id": container_id, "controllers": ",".join(sorted(repaired))},
            )
        return sorted(repaired)

    def _freezer(self, cgroup_path: str) -> Path | None:
        dirs = self.hierarchy.dirs(cgroup_path)
        if self.hierarchy.mode is Mode.V2:
            state = dirs["unified"] / "cgroup.freeze"
        elif "freezer" in dirs:
            state = dirs["freezer"] / "freezer.state"
        else:
            return None
        return state if state.exists() else None

    # --- helpers ---------------------------------------------------------------------------------------

    def _write_files(
        self, oci: dict[str, Any], cgroup_path: str, container_id: str, update: bool = False
    ) -> None:
        """Write ``oci``'s limits into the cgroup's files; ``update``: of a running container, whose memory
        must fit under a new limit (res.check_memory_fits)."""
        try:
            if update:
                res.check_memory_fits(oci, self.hierarchy, cgroup_path)
            res.apply_files(oci, self.hierarchy, cgroup_path)
        except FileNotFoundError as exc:
            raise FailedPrecondition(
                f"cgroup {cgroup_path} of container {container_id} does not exist: {exc.filename}",
                container_id,
            ) from None
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise FailedPrecondition(f"cgroup {cgroup_path} is gone", container_id) from None
            raise


def _procs_below(directory: Path) -> list[int]:
    pids: list[int] = []
    for root, _dirs, _files in os.walk(directory):
        try:
            pids.extend(int(p) for p in (Path(root) / "cgroup.procs").read_text().split())
        except OSError as exc:
            # Gone meanwhile; a cgroup being removed answers ENODEV for a moment before it vanishes.
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise
    return pids


def _set_frozen(state_file: Path, frozen: bool) -> None:
    """Freeze or thaw (v1 freezer.state / v2 cgroup.freeze); waits briefly for v1's FREEZING to end."""
    v2 = state_file.name == "cgroup.freeze"
    try:
        state_file.write_text(("1" if frozen else "0") if v2 else ("FROZEN" if frozen else "THAWED"))
        if frozen and not v2:
            for _ in range(200):
                if state_file.read_text().strip() != "FREEZING":
                    break
                time.sleep(0.005)
    except FileNotFoundError:
        pass


def _cgroup_paths(pid: int) -> dict[str, str]:
    """controller -> cgroup path of ``pid`` (from /proc/<pid>/cgroup; co-mounted names split)."""
    paths: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, names, where = line.split(":", 2)
        for name in names.split(",") if names else ["unified"]:
            paths[name] = where
    return paths
