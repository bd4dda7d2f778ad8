"""A pod's readings as the sum of its containers', for pods without a cgroup of their own."""

from __future__ import annotations

from collections.abc import Sequence

from metrics.readings import CgroupSample, CpuReading, MemoryReading


def _total(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def sum_samples(samples: Sequence[CgroupSample]) -> CgroupSample | None:
    """Counters and usages added up; limits left out (a sum of container limits is not the pod's)."""
    if not samples:
        return None
    cpus = [s.cpu for s in samples if s.cpu is not None]
    mems = [s.memory for s in samples if s.memory is not None]
    cpu = None
    if cpus:
        cpu = CpuReading(
            usage_ns=sum(c.usage_ns for c in cpus),
            user_ns=_total([c.user_ns for c in cpus]),
            system_ns=_total([c.system_ns for c in cpus]),
            periods=_total([c.periods for c in cpus]),
            throttled_periods=_total([c.throttled_periods for c in cpus]),
            throttled_ns=_total([c.throttled_ns for c in cpus]),
        )
    memory = None
    if mems:
        memory = MemoryReading(
            usage_bytes=sum(m.usage_bytes for m in mems),
            working_set_bytes=sum(m.working_set_bytes for m in mems),
            rss_bytes=_total([m.rss_bytes for m in mems]),
            cache_bytes=_total([m.cache_bytes for m in mems]),
            mapped_file_bytes=_total([m.mapped_file_bytes for m in mems]),
            swap_bytes=_total([m.swap_bytes for m in mems]),
            failcnt=_total([m.failcnt for m in mems]),
            page_faults=_total([m.page_faults for m in mems]),
            major_page_faults=_total([m.major_page_faults for m in mems]),
            oom_events=_total([m.oom_events for m in mems]),
        )
    return CgroupSample(
        timestamp_ns=max(s.timestamp_ns for s in samples),
        version=samples[0].version,
        cpu=cpu,
        memory=memory,
        processes=_total([s.processes for s in samples]),
    )
