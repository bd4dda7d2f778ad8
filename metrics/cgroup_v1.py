"""Read a container's or pod's cgroup v1 controllers into one CgroupSample.

On v1 every controller has its own hierarchy (on this kind of host cpu and cpuacct are separate
mounts too), so the caller hands us a controller -> directory map. Each file is read once per sample.
Totals come from the hierarchical ("total_*") entries of memory.stat, so a pod cgroup counts its
containers.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

from metrics.cgroupfs import count_lines, limit, read_int, read_keyed, read_text
from metrics.readings import CgroupSample, CpuReading, IoReading, LimitsReading, MemoryReading

_NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
_BLKIO_LINE = re.compile(r"^\S+ (Read|Write) (\d+)$", re.MULTILINE)


def _controller(dirs: Mapping[str, Path], name: str, probe: str) -> Path | None:
    """The dir of ``name``; a co-mounted hierarchy ("cpu,cpuacct") is found by the file it holds."""
    path = dirs.get(name)
    if path is not None:
        return path
    for key, candidate in dirs.items():
        if name in key.split(",") or (candidate / probe).exists():
            return candidate
    return None


def read_cpu(cpuacct: Path | None, cpu: Path | None) -> tuple[CpuReading | None, LimitsReading]:
    quota = period = shares = None
    throttle: dict[str, int] = {}
    if cpu is not None:
        quota = read_int(f"{cpu}/cpu.cfs_quota_us")
        period = read_int(f"{cpu}/cpu.cfs_period_us")
        shares = read_int(f"{cpu}/cpu.shares")
        throttle = read_keyed(f"{cpu}/cpu.stat") or {}
    limits = LimitsReading(
        cpu_quota_us=quota if quota is not None and quota > 0 else None,
        cpu_period_us=period,
        cpu_shares=shares,
    )
    if cpuacct is None:
        return None, limits
    usage = read_int(f"{cpuacct}/cpuacct.usage")
    if usage is None:
        return None, limits
    ticks = read_keyed(f"{cpuacct}/cpuacct.stat") or {}
    user = ticks.get("user")
    system = ticks.get("system")
    reading = CpuReading(
        usage_ns=usage,
        user_ns=None if user is None else user * _NS_PER_TICK,
        system_ns=None if system is None else system * _NS_PER_TICK,
        periods=throttle.get("nr_periods"),
        throttled_periods=throttle.get("nr_throttled"),
        throttled_ns=throttle.get("throttled_time"),
    )
    return reading, limits


def read_memory(memory: Path) -> MemoryReading | None:
    usage = read_int(f"{memory}/memory.usage_in_bytes")
    stat = read_keyed(f"{memory}/memory.stat")
    if usage is None or stat is None:
        return None
    inactive_file = stat.get("total_inactive_file", 0)
    oom = read_keyed(f"{memory}/memory.oom_control") or {}
    mem_limit = limit(read_int(f"{memory}/memory.limit_in_bytes"))
    memsw_limit = limit(read_int(f"{memory}/memory.memsw.limit_in_bytes"))
    swap_limit = None
    if memsw_limit is not None and mem_limit is not None:
        swap_limit = max(memsw_limit - mem_limit, 0)
    return MemoryReading(
        usage_bytes=usage,
        working_set_bytes=max(usage - inactive_file, 0),
        rss_bytes=stat.get("total_rss"),
        cache_bytes=stat.get("total_cache"),
        mapped_file_bytes=stat.get("total_mapped_file"),
        swap_bytes=stat.get("total_swap"),
        failcnt=read_int(f"{memory}/memory.failcnt"),
        page_faults=stat.get("total_pgfault"),
        major_page_faults=stat.get("total_pgmajfault"),
        oom_events=oom.get("oom_kill"),
        limit_bytes=mem_limit,
        swap_limit_bytes=swap_limit,
    )


def read_io(blkio: Path) -> IoReading | None:
    """Bytes read and written (what the exporter's container_fs_*_bytes_total series show)."""
    served = read_text(f"{blkio}/blkio.throttle.io_service_bytes_recursive")
    if served is None:
        return None
    totals = {"Read": 0, "Write": 0}
    for kind, value in _BLKIO_LINE.findall(served):
        totals[kind] += int(value)
    return IoReading(totals["Read"], totals["Write"])


def read(dirs: Mapping[str, Path]) -> CgroupSample:
    """One sample of every controller in ``dirs`` (controller name -> cgroup dir)."""
    timestamp = time.time_ns()
    cpu, limits = read_cpu(
        _controller(dirs, "cpuacct", "cpuacct.usage"), _controller(dirs, "cpu", "cpu.shares")
    )
    memory_dir = dirs.get("memory")
    memory = read_memory(memory_dir) if memory_dir is not None else None
    processes = pids_limit = None
    pids_dir = dirs.get("pids")
    if pids_dir is not None:
        processes = read_int(f"{pids_dir}/pids.current")
        pids_limit = read_int(f"{pids_dir}/pids.max")
    if processes is None:
        any_dir = memory_dir or next(iter(dirs.values()), None)
        processes = count_lines(any_dir / "cgroup.procs") if any_dir is not None else None
    blkio = dirs.get("blkio")
    io = read_io(blkio) if blkio is not None else None
    if pids_limit is not None:
        limits = LimitsReading(limits.cpu_quota_us, limits.cpu_period_us, limits.cpu_shares, pids_limit)
    return CgroupSample(
        timestamp_ns=timestamp,
        version=1,
        cpu=cpu,
        memory=memory,
        limits=limits,
        io=io,
        processes=processes,
    )
