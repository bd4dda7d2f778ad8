"""What one sample of a cgroup, a network namespace or a writable layer holds.

The readers (cgroup_v1, cgroup_v2, network, fsusage) fill these; the CRI stats RPCs and the Prometheus
exporter only convert them. They are frozen so that one sample can be shared by both without copying,
and every sample carries the wall-clock time it was taken at (CRI reports timestamps in ns since the
epoch). A value the kernel does not provide on this host is None rather than 0, so that a consumer can
leave the field out instead of reporting a false zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CpuReading:
    usage_ns: int  # total CPU time of every task of the cgroup, in core-nanoseconds
    user_ns: int | None = None
    system_ns: int | None = None
    periods: int | None = None  # CFS enforcement periods elapsed
    throttled_periods: int | None = None
    throttled_ns: int | None = None


@dataclass(frozen=True)
class MemoryReading:
    usage_bytes: int
    working_set_bytes: int  # usage minus inactive file pages: what eviction looks at
    rss_bytes: int | None = None  # anonymous memory (v1: total_rss, v2: anon)
    cache_bytes: int | None = None  # page cache (v1: total_cache, v2: file)
    mapped_file_bytes: int | None = None
    swap_bytes: int | None = None
    failcnt: int | None = None  # times the limit was hit (v2: memory.events "max")
    page_faults: int | None = None
    major_page_faults: int | None = None
    oom_events: int | None = None  # OOM kills in the cgroup
    limit_bytes: int | None = None  # None: unlimited
    swap_limit_bytes: int | None = None

    @property
    def available_bytes(self) -> int | None:
        """Bytes left before the limit, as kubelet computes it (limit - working set); None if unlimited."""
        if self.limit_bytes is None:
            return None
        return max(self.limit_bytes - self.working_set_bytes, 0)


@dataclass(frozen=True)
class LimitsReading:
    cpu_quota_us: int | None = None  # None: no quota ("max" / -1)
    cpu_period_us: int | None = None
    cpu_shares: int | None = None  # v1 shares; v2 weight converted back to shares
    pids_limit: int | None = None


@dataclass(frozen=True)
class IoReading:
    read_bytes: int = 0
    write_bytes: int = 0


@dataclass(frozen=True)
class PsiLine:
    """One line of a cgroup v2 pressure file: share of time (%) over 10/60/300 s, and the total."""

    avg10: float
    avg60: float
    avg300: float
    total_ns: int  # the kernel counts microseconds; kept in ns as CRI reports it


@dataclass(frozen=True)
class PsiReading:
    some: PsiLine  # some task of the cgroup was waiting for the resource
    full: PsiLine | None = None  # every non-idle task was waiting (cpu: only at cgroup level)


@dataclass(frozen=True)
class CgroupSample:
    """One reading of a container's or a pod's cgroup (every controller read once)."""

    timestamp_ns: int
    version: int  # 1 or 2
    cpu: CpuReading | None = None
    memory: MemoryReading | None = None
    limits: LimitsReading = field(default_factory=LimitsReading)
    io: IoReading | None = None
    processes: int | None = None  # tasks in the cgroup (pids.current, or cgroup.procs lines)
    # Pressure stall information by resource ("cpu", "memory", "io"), from the cgroup's v2 directory
    # (on a hybrid host: its directory in the cgroup2 mount, which has PSI even without controllers).
    psi: dict[str, PsiReading] = field(default_factory=dict)


@dataclass(frozen=True)
class InterfaceReading:
    name: str
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_errors: int
    tx_errors: int
    rx_dropped: int
    tx_dropped: int


@dataclass(frozen=True)
class NetworkSample:
    timestamp_ns: int
    interfaces: tuple[InterfaceReading, ...]

    def interface(self, name: str) -> InterfaceReading | None:
        return next((i for i in self.interfaces if i.name == name), None)


@dataclass(frozen=True)
class FsUsage:
    timestamp_ns: int
    path: str
    used_bytes: int
    inodes_used: int
