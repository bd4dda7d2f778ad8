"""The bench helper that times cgroup reads over many real cgroups cleans up after itself."""

from __future__ import annotations

from pathlib import Path

from cri.stats.timing import time_cgroup_reads


def test_time_cgroup_reads_reads_every_cgroup_and_removes_them():
    timing = time_cgroup_reads(count=5, repeats=2)
    assert timing.series == 5 and len(timing.samples_s) == 2
    assert all(s > 0 for s in timing.samples_s)
    assert not list(Path("/sys/fs/cgroup/memory").glob("calyx-bench-*"))
