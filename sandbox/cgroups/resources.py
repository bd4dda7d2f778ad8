"""OCI ``linux.resources`` -> cgroup file values, for v1 and v2, and what the host can limit.

The OCI dict is the one representation the kernel layer takes: the containers subsystem makes it from
CRI's resources (cri/containers/resources.py) and puts it in the runtime spec (runc then sets up the
cgroup), and ``update`` turns the same dict into file writes for a running container. Both paths
therefore agree on what a value means on this host.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

from calyx_base.errors import FailedPrecondition, InvalidArgument
from sandbox.cgroups.hierarchy import Hierarchy, Mode

log = logging.getLogger("sandbox.cgroups")

HUGEPAGES = Path("/sys/kernel/mm/hugepages")
ONLINE_CPUS = Path("/sys/devices/system/cpu/online")
ONLINE_NODES = Path("/sys/devices/system/node/online")
DEFAULT_CPU_PERIOD = 100_000


def host_page_sizes() -> set[str]:
    """Huge page sizes of this kernel in the CRI/OCI notation ("2MB", "1GB")."""
    sizes = set()
    try:
        for entry in HUGEPAGES.iterdir():
            kib = int(entry.name.removeprefix("hugepages-").removesuffix("kB"))
            sizes.add(page_size_name(kib * 1024))
    except (OSError, ValueError):
        pass
    return sizes


def page_size_name(size: int) -> str:
    """Bytes -> "2MB"/"1GB"/"64KB" as cgroup hugetlb file names spell it."""
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def parse_list(text: str) -> set[int] | None:
    """The members of a kernel list such as "0-2,4" (cpusets, online CPUs); None if it is not one (or
    absurdly large)."""
    members: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            return None
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first or last - first > 65536:
            return None
        members.update(range(first, last + 1))
    return members


def online(path: Path) -> set[int] | None:
    """The CPUs (ONLINE_CPUS) or memory nodes (ONLINE_NODES) this host has online; None if unknown."""
    try:
        return parse_list(path.read_text().strip())
    except OSError:
        return None


def swap_accounting(hierarchy: Hierarchy) -> bool:
    """Whether a swap limit can be set (v1: memsw files exist; v2: memory.swap.max exists)."""
    if not hierarchy.has("memory"):
        return False
    memdir = hierarchy.dirs("/")["memory"]
    if hierarchy.mode is Mode.V2:
        return True  # memory.swap.max exists in every non-root cgroup when the kernel has swap support
    return (memdir / "memory.memsw.limit_in_bytes").exists()


# --- OCI -> cgroup files ------------------------------------------------------------------------------


def v2_cpu_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144) -> v2 cpu.weight (1..10000), the mapping runc and kubelet use."""
    return 1 + ((shares - 2) * 9999) // 262142


def file_writes(oci: dict[str, Any], hierarchy: Hierarchy) -> list[tuple[str, str, str]]:
    """(controller, file, value) writes that apply ``oci`` to one cgroup, in a workable order."""
    cpu = oci.get("cpu", {})
    memory = oci.get("memory", {})
    writes: list[tuple[str, str, str]] = []
    if hierarchy.mode is Mode.V1:
        if "shares" in cpu:
            writes.append(("cpu", "cpu.shares", str(cpu["shares"])))
        if "period" in cpu:
            writes.append(("cpu", "cpu.cfs_period_us", str(cpu["period"])))
        if "quota" in cpu:
            writes.append(("cpu", "cpu.cfs_quota_us", str(cpu["quota"])))
        if "cpus" in cpu:
            writes.append(("cpuset", "cpuset.cpus", cpu["cpus"]))
        if "mems" in cpu:
            writes.append(("cpuset", "cpuset.mems", cpu["mems"]))
        if "limit" in memory:
            writes.append(("memory", "memory.limit_in_bytes", str(memory["limit"])))
        if "swap" in memory:
            writes.append(("memory", "memory.memsw.limit_in_bytes", str(memory["swap"])))
        if "pids" in oci:
            limit = oci["pids"]["limit"]
            writes.append(("pids", "pids.max", str(limit) if limit > 0 else "max"))
        for item in oci.get("hugepageLimits", []):
            writes.append(("hugetlb", f"hugetlb.{item['pageSize']}.limit_in_bytes", str(item["limit"])))
        return writes

    if "shares" in cpu:
        writes.append(("cpu", "cpu.weight", str(v2_cpu_weight(cpu["shares"]))))
    if "quota" in cpu or "period" in cpu:
        quota = cpu.get("quota", -1)
        writes.append(("cpu", "cpu.max", f"{quota if quota > 0 else 'max'} {cpu.get('period', '')}".strip()))
    if "cpus" in cpu:
        writes.append(("cpuset", "cpuset.cpus", cpu["cpus"]))
    if "mems" in cpu:
        writes.append(("cpuset", "cpuset.mems", cpu["mems"]))
    if "limit" in memory:
        writes.append(("memory", "memory.max", _v2_max(memory["limit"])))
    if "swap" in memory:
        limit, swap = memory.get("limit", 0), memory["swap"]
        swap_only = -1 if swap == -1 or limit <= 0 else swap - limit
        writes.append(("memory", "memory.swap.max", _v2_max(swap_only)))
    if "pids" in oci:
        writes.append(("pids", "pids.max", _v2_max(oci["pids"]["limit"])))
    for item in oci.get("hugepageLimits", []):
        writes.append(("hugetlb", f"hugetlb.{item['pageSize']}.max", str(item["limit"])))
    for key, value in oci.get("unified", {}).items():
        writes.append((key.split(".", 1)[0], key, value))
    return writes


def _v2_max(value: int) -> str:
    return "max" if value <= -1 else str(value)


def check_memory_fits(oci: dict[str, Any], hierarchy: Hierarchy, cgroup_path: str) -> None:
    """cgroup v2: FailedPrecondition when the new memory limit is below what the cgroup holds and cannot
    give back (memory.current less its page cache) with no swap to push it to.

    v1 refuses such a limit itself (EBUSY after trying to reclaim); v2 takes any memory.max and then
    reclaims or OOM-kills the container. kubelet expects UpdateContainerResources to fail instead, as it
    does on v1, so Calyx asks the question v1's kernel asked."""
    limit = int(oci.get("memory", {}).get("limit", 0) or 0)
    if hierarchy.mode is not Mode.V2 or limit <= 0:
        return
    directory = hierarchy.dirs(cgroup_path).get("memory")
    if directory is None:
        return
    try:
        current = int((directory / "memory.current").read_text())
        stat = dict(line.split() for line in (directory / "memory.stat").read_text().splitlines())
        swap_file = directory / "memory.swap.max"
        swap_max = swap_file.read_text().strip() if swap_file.exists() else "0"
    except (FileNotFoundError, ValueError):
        return  # gone, or not what v2 writes: the write below tells
    held = current - int(stat.get("file", 0))
    if limit >= held or (swap_max != "0" and _host_has_swap()):
        return
    raise FailedPrecondition(
        f"cgroup {cgroup_path}: memory.max={limit} is below the {held} bytes its processes hold now "
        "(memory.current less page cache) and there is no swap: the kernel would OOM-kill them"
    )


def _host_has_swap() -> bool:
    try:
        return len(Path("/proc/swaps").read_text().splitlines()) > 1
    except OSError:
        return False


def apply_files(oci: dict[str, Any], hierarchy: Hierarchy, cgroup_path: str) -> None:
    """Write ``oci`` into the cgroup files of ``cgroup_path`` (which must exist).

    Pairs that the kernel checks against each other are retried in the other order: v1 refuses a
    memory limit above the memory+swap limit, and a cfs period that makes the current quota invalid.
    """
    dirs = hierarchy.dirs(cgroup_path)
    pending = file_writes(oci, hierarchy)
    for _attempt in range(len(pending) + 1):
        failed: list[tuple[str, str, str]] = []
        error: OSError | None = None
        for controller, name, value in pending:
            directory = dirs.get(controller)
            if directory is None:
                raise InvalidArgument(f"cgroup controller {controller!r} ({name}) is not available here")
            try:
                (directory / name).write_text(value)
            except FileNotFoundError:
                raise
            except OSError as exc:
                if exc.errno == errno.EBUSY:  # e.g. a memory limit below what the cgroup uses now
                    raise FailedPrecondition(
                        f"cgroup {cgroup_path}: the kernel refused {name}={value}: {exc.strerror}"
                    ) from None
                if exc.errno not in (errno.EINVAL, errno.ERANGE):  # a value the kernel refuses
                    raise
                failed.append((controller, name, value))
                error = exc
        if not failed:
            return
        if len(failed) == len(pending):
            assert error is not None
            raise InvalidArgument(
                f"cgroup {cgroup_path}: cannot write {failed[0][1]}={failed[0][2]}: {error}"
            )
        pending = failed
