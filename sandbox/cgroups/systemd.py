"""The systemd driver: pod slices and scopes are systemd units, created and changed over D-Bus.

With kubelet's ``cgroupDriver: systemd`` systemd owns the cgroup tree; writing directories behind its back
gets them reset or removed. So every cgroup here is a unit: the pod's ``*.slice`` (created if kubelet has
not), the container's ``calyx-<id>.scope`` (runc's systemd driver makes it from the cgroups path
``<slice>:calyx:<id>``), and each conmon's ``calyx-conmon-<id>.scope``. Limits are unit properties;
files are written only for what systemd has no property for (cpuset and swap on v1, hugetlb) and, as
runc does, for the exact CFS values (systemd stores the quota per second).
"""

from __future__ import annotations

import logging
import math
import re
import signal
from typing import Any

from sandbox.cgroups.dbus import UNIT_EXISTS, Property, Systemd, SystemdError
from sandbox.cgroups.driver import CONTAINER_PREFIX, MONITOR_PREFIX, CgroupDriver
from sandbox.cgroups.hierarchy import Hierarchy, Mode, is_populated, rmdir_if_exists
from sandbox.cgroups.names import check_id, slice_path, slice_unit
from sandbox.cgroups.resources import DEFAULT_CPU_PERIOD, check_memory_fits, v2_cpu_weight

log = logging.getLogger("sandbox.cgroups")

UNIT = "org.freedesktop.systemd1.Unit"
INFINITY = (1 << 64) - 1  # systemd's "no limit" for uint64 properties
SLICE_DESCRIPTION = "calyx pod slice"  # marks the slices Calyx made, the only ones it stops


class SystemdDriver(CgroupDriver):
    name = "systemd"
    default_parent = "system.slice"

    def __init__(
        self,
        hierarchy: Hierarchy | None = None,
        pids_limit: int = 0,
        default_parent: str = "",
        manager: Systemd | None = None,
    ) -> None:
        super().__init__(hierarchy, pids_limit, default_parent)
        self.manager = manager or Systemd()

    def recover(self) -> None:
        super().recover()
        try:
            state = self.manager.unit_property("-.slice", UNIT, "ActiveState")
            log.info("systemd reachable over D-Bus", extra={"root_slice": state})
        except Exception as exc:  # the daemon still serves; pod creation will report the same error
            log.error("systemd not reachable over D-Bus", extra={"error": str(exc)})

    def close(self) -> None:
        self.manager.close()

    # --- naming ----------------------------------------------------------------------------------------

    def validate_parent(self, parent: str) -> None:
        slice_unit(parent)

    def parent_or_default(self, parent: str) -> str:
        """The pod's slice unit: a path of slices (``/test.slice``) names its last component."""
        return slice_unit(super().parent_or_default(parent))

    def parent_path(self, parent: str) -> str:
        return slice_path(self.parent_or_default(parent))

    def container_cgroups_path(self, parent: str, container_id: str) -> str:
        return f"{self.parent_or_default(parent)}:{CONTAINER_PREFIX}:{check_id(container_id)}"

    @staticmethod
    def container_unit(container_id: str) -> str:
        return f"{CONTAINER_PREFIX}-{check_id(container_id)}.scope"

    def container_path(self, container_id: str, parent: str) -> str:
        return f"{self.parent_path(parent).rstrip('/')}/{self.container_unit(container_id)}"

    CHILD_NAME = re.compile(
        rf"{MONITOR_PREFIX}-([0-9a-f]{{64}})\.scope|{CONTAINER_PREFIX}-([0-9a-f]{{64}})\.scope"
    )

    def monitor_cgroup(self, container_id: str, parent: str) -> str:
        return f"{MONITOR_PREFIX}-{check_id(container_id)}.scope"

    def monitor_path(self, container_id: str, parent: str) -> str:
        return f"{self.parent_path(parent).rstrip('/')}/{self.monitor_cgroup(container_id, parent)}"

    # --- lifecycle -------------------------------------------------------------------------------------

    def prepare_parent(self, parent: str, resources: dict[str, Any] | None = None) -> None:
        unit = self.parent_or_default(parent)
        props = self.properties(resources or {})
        state = self.manager.unit_property(unit, UNIT, "ActiveState")
        if state in ("active", "activating", "reloading"):
            if props:
                self.manager.set_unit_properties(unit, props, runtime=True)
            return
        description = ("Description", ("s", f"{SLICE_DESCRIPTION} {unit}"))
        try:
            self.manager.start_transient_unit(unit, [description, *props])
        except SystemdError as exc:
            if exc.name != UNIT_EXISTS:
                raise
            # Known to systemd (a unit file, or loaded as some scope's parent) but not running: start it.
            self.manager.set_unit_properties(unit, [description, *props], runtime=True)
            self.manager.start_unit(unit)
        log.info("pod slice started", extra={"cgroup_parent": unit})

    def remove_parent(self, parent: str) -> bool:
        unit = self.parent_or_default(parent)
        if self.manager.unit_path(unit) is None:
            return True
        description = str(self.manager.unit_property(unit, UNIT, "Description") or "")
        if not description.startswith(SLICE_DESCRIPTION):
            # kubelet's own pod slices, and slices from unit files (system.slice...), are not ours
            return True
        path = self.parent_path(unit)
        if any(d.exists() and is_populated(d) for d in self.hierarchy.unique_dirs(path, named=True)):
            log.info("pod slice not empty, kept", extra={"cgroup_parent": unit})
            return False
        self.manager.stop_unit(unit)
        self._remove_unmanaged_dirs(path)
        log.info("pod slice stopped", extra={"cgroup_parent": unit})
        return True

    def _remove_unmanaged_dirs(self, cgroup_path: str) -> None:
        """After a stop: systemd removes the dirs of the controllers it manages; runc also made dirs in
        the others (cpuset, freezer on v1), which stay unless removed here."""
        for directory in self.hierarchy.unique_dirs(cgroup_path, named=True):
            rmdir_if_exists(directory)

    def place_monitor(self, container_id: str, parent: str, pid: int) -> None:
        """Put conmon into its own scope. Called right after ``runc create``, so it also repairs the
        container's own placement (see CgroupDriver.repair_placement) before the container starts."""
        try:
            self.repair_placement(container_id, parent)
        except OSError as exc:  # the container still runs; its device list may not confine it
            log.warning(
                "container placement not repaired", extra={"container_id": container_id, "error": str(exc)}
            )
        unit = self.monitor_cgroup(container_id, parent)
        props: list[Property] = [
            ("Slice", ("s", self.parent_or_default(parent))),
            ("Description", ("s", f"calyx monitor of container {container_id}")),
            ("PIDs", ("au", [pid])),
            ("CollectMode", ("s", "inactive-or-failed")),
        ]
        self.manager.start_transient_unit(unit, props)

    def remove_container(self, container_id: str, parent: str) -> None:
        """Stop the container's and monitor's scopes (this kills whatever still runs in them)."""
        for unit, path in (
            (self.container_unit(container_id), self.container_path(container_id, parent)),
            (self.monitor_cgroup(container_id, parent), self.monitor_path(container_id, parent)),
        ):
            if self.manager.unit_path(unit) is not None:
                # SIGKILL first: a stop alone waits out TimeoutStopSec for processes that ignore
                # SIGTERM (a shell as PID 1 does), holding the D-Bus connection all that time.
                self.manager.kill_unit(unit, signal.SIGKILL)
                self.manager.stop_unit(unit)
            self._remove_unmanaged_dirs(path)

    # --- resources -------------------------------------------------------------------------------------

    def properties(self, oci: dict[str, Any]) -> list[Property]:
        """Unit properties for OCI resources, in the names this systemd's cgroup version uses."""
        v2 = self.hierarchy.mode is Mode.V2
        cpu, memory = oci.get("cpu", {}), oci.get("memory", {})
        props: list[Property] = []
        if "shares" in cpu:
            props.append(
                ("CPUWeight", ("t", v2_cpu_weight(cpu["shares"])))
                if v2
                else ("CPUShares", ("t", int(cpu["shares"])))
            )
        if "quota" in cpu or "period" in cpu:
            period = int(cpu.get("period") or DEFAULT_CPU_PERIOD)
            quota = int(cpu.get("quota", -1))
            per_sec = INFINITY if quota <= 0 else math.ceil(quota * 1_000_000 / period)
            props.append(("CPUQuotaPeriodUSec", ("t", period)))
            props.append(("CPUQuotaPerSecUSec", ("t", per_sec)))
        if "limit" in memory:
            limit = int(memory["limit"])
            props.append(("MemoryMax" if v2 else "MemoryLimit", ("t", limit if limit > 0 else INFINITY)))
        if v2 and "swap" in memory:
            limit, swap = int(memory.get("limit", 0)), int(memory["swap"])
            props.append(("MemorySwapMax", ("t", swap - limit if swap > 0 and limit > 0 else INFINITY)))
        if "pids" in oci:
            limit = int(oci["pids"]["limit"])
            props.append(("TasksMax", ("t", limit if limit > 0 else INFINITY)))
        if v2 and "cpus" in cpu:
            props.append(("AllowedCPUs", ("ay", _bitmask(cpu["cpus"]))))
        if v2 and "mems" in cpu:
            props.append(("AllowedMemoryNodes", ("ay", _bitmask(cpu["mems"]))))
        return props

    def update(self, container_id: str, parent: str, oci: dict[str, Any]) -> None:
        check_memory_fits(oci, self.hierarchy, self.container_path(container_id, parent))
        props = self.properties(oci)
        if props:
            # runtime=True: the change lives in /run and goes with the scope; nothing lands in /etc.
            self.manager.set_unit_properties(self.container_unit(container_id), props, runtime=True)
        self._write_files(oci, self.container_path(container_id, parent), container_id)


def _bitmask(cpus: str) -> bytes:
    """ "0-2,4" -> systemd's CPU/node set as a little-endian byte array of bits."""
    bits = 0
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        for n in range(int(lo), int(hi or lo) + 1):
            bits |= 1 << n
    return bits.to_bytes(max(1, (bits.bit_length() + 7) // 8), "little")
