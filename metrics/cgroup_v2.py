"""Read a cgroup v2 directory into one CgroupSample.

v2 has one directory per cgroup. cpu.stat's usage lines are kept by the cgroup core even without the cpu
controller; the rest exists only for enabled controllers, and a missing file leaves its part None. The
v1 names are kept in the result (rss = anon, cache = file, failcnt = memory.events "max") because that
is what cAdvisor's series mean on v2 as well.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from metrics.cgroupfs import count_lines, limit, read_int, read_keyed, read_text
from metrics.readings import CgroupSample, CpuReading, IoReading, LimitsReading, MemoryReading

_IO_FIELD = re.compile(r"\b(rbytes|wbytes)=(\d+)")


def weight_to_shares(weight: int) -> int:
    """Inverse of the usual shares -> cpu.weight mapping ([2, 262144] onto [1, 10000])."""
    return 2 + ((weight - 1) * 262142) // 9999


def read_cpu(path: Path) -> tuple[CpuReading | None, LimitsReading]:
    quota = period = shares = None
    cpu_max = read_text(f"{path}/cpu.max")
    if cpu_max is not None:
        first, _, second = cpu_max.strip().partition(" ")
        quota = None if first == "max" else int(first)
        period = int(second) if second else None
    weight = read_int(f"{path}/cpu.weight")
    if weight is not None:
        shares = weight_to_shares(weight)
    limits = LimitsReading(cpu_quota_us=quota, cpu_period_us=period, cpu_shares=shares)
    stat = read_keyed(f"{path}/cpu.stat")
    if stat is None or "usage_usec" not in stat:
        return None, limits
    throttled = stat.get("throttled_usec")
    reading = CpuReading(
        usage_ns=stat["usage_usec"] * 1000,
        user_ns=stat["user_usec"] * 1000 if "user_usec" in stat else None,
        system_ns=stat["system_usec"] * 1000 if "system_usec" in stat else None,
        periods=stat.get("nr_periods"),
        throttled_periods=stat.get("nr_throttled"),
        throttled_ns=None if throttled is None else throttled * 1000,
    )
    return reading, limits


def read_memory(path: Path) -> MemoryReading | None:
    usage = read_int(f"{path}/memory.current")
    stat = read_keyed(f"{path}/memory.stat")
    if usage is None or stat is None:
        return None
    events = read_keyed(f"{path}/memory.events") or {}
    mem_limit = limit(read_int(f"{path}/memory.max"))
    return MemoryReading(
        usage_bytes=usage,
        working_set_bytes=max(usage - stat.get("inactive_file", 0), 0),
        rss_bytes=stat.get("anon"),
        cache_bytes=stat.get("file"),
        mapped_file_bytes=stat.get("file_mapped"),
        swap_bytes=read_int(f"{path}/memory.swap.current"),
        failcnt=events.get("max"),
        page_faults=stat.get("pgfault"),
        major_page_faults=stat.get("pgmajfault"),
        oom_events=events.get("oom_kill"),
        limit_bytes=mem_limit,
        swap_limit_bytes=limit(read_int(f"{path}/memory.swap.max")),
    )


def read_io(path: Path) -> IoReading | None:
    text = read_text(f"{path}/io.stat")
    if text is None:
        return None
    totals = {"rbytes": 0, "wbytes": 0}
    for key, value in _IO_FIELD.findall(text):
        totals[key] += int(value)
    return IoReading(totals["rbytes"], totals["wbytes"])


def read(path: Path) -> CgroupSample:
    """One sample of the v2 cgroup at ``path``."""
    timestamp = time.time_ns()
    cpu, limits = read_cpu(path)
    processes = read_int(f"{path}/pids.current")
    if processes is None:
        processes = count_lines(f"{path}/cgroup.procs")
    pids_limit = read_int(f"{path}/pids.max")
    if pids_limit is not None:
        limits = LimitsReading(limits.cpu_quota_us, limits.cpu_period_us, limits.cpu_shares, pids_limit)
    return CgroupSample(
        timestamp_ns=timestamp,
        version=2,
        cpu=cpu,
        memory=read_memory(path),
        limits=limits,
        io=read_io(path),
        processes=processes,
    )
