"""cgroup v2 memory, pids and io files as the kernel writes them (Documentation/admin-guide/cgroup-v2.rst).

This host's cgroup2 mount has no memory, pids or io controller (they are bound to v1), so these parts
of the v2 reader cannot be exercised against the kernel here; tests/metrics/test_cgroup_readers.py
covers the v2 cpu.stat and cgroup.procs it can. This checks the parsing of the documented formats.
"""

from __future__ import annotations

from pathlib import Path

from metrics import cgroup_v2
from metrics.cgroup import is_v2, read_cgroup

MiB = 1024 * 1024

FILES = {
    "cgroup.controllers": "cpuset cpu io memory pids\n",
    "cgroup.procs": "101\n102\n",
    "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\n"
    "nr_throttled 7\nthrottled_usec 350000\nnr_bursts 0\nburst_usec 0\n",
    "cpu.max": "50000 100000\n",
    "cpu.weight": "100\n",
    "memory.current": f"{80 * MiB}\n",
    "memory.max": f"{256 * MiB}\n",
    "memory.stat": f"anon {64 * MiB}\nfile {16 * MiB}\nkernel 0\nfile_mapped {2 * MiB}\n"
    f"active_file {6 * MiB}\ninactive_file {10 * MiB}\npgfault 17000\npgmajfault 3\n",
    "memory.events": "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
    "memory.swap.current": "0\n",
    "memory.swap.max": "max\n",
    "pids.current": "2\n",
    "pids.max": "max\n",
    "cpu.pressure": "some avg10=1.50 avg60=0.75 avg300=0.20 total=123456\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    "memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=10\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=5\n",
    "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
    "8:16 rbytes=1000 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
}


def test_v2_files_read_into_one_sample(tmp_path: Path) -> None:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    dirs = {"unified": tmp_path}
    assert is_v2(dirs)
    sample = read_cgroup(dirs)
    assert sample.version == 2
    assert sample.cpu is not None
    assert (sample.cpu.usage_ns, sample.cpu.user_ns, sample.cpu.system_ns) == (2.5e9, 2e9, 0.5e9)
    assert (sample.cpu.periods, sample.cpu.throttled_periods, sample.cpu.throttled_ns) == (40, 7, 350_000_000)
    assert (sample.limits.cpu_quota_us, sample.limits.cpu_period_us) == (50000, 100000)
    assert sample.limits.cpu_shares is not None and abs(sample.limits.cpu_shares - 2597) < 30
    assert sample.limits.pids_limit is None  # "max"
    m = sample.memory
    assert m is not None
    assert m.usage_bytes == 80 * MiB and m.working_set_bytes == 70 * MiB
    assert (m.rss_bytes, m.cache_bytes, m.mapped_file_bytes) == (64 * MiB, 16 * MiB, 2 * MiB)
    assert (m.failcnt, m.oom_events, m.page_faults, m.major_page_faults) == (5, 1, 17000, 3)
    assert m.limit_bytes == 256 * MiB and m.available_bytes == 186 * MiB
    assert m.swap_bytes == 0 and m.swap_limit_bytes is None
    assert sample.processes == 2
    assert sample.io is not None and (sample.io.read_bytes, sample.io.write_bytes) == (5096, 8192)
    assert set(sample.psi) == {"cpu", "memory"}  # no io.pressure file: left out
    cpu = sample.psi["cpu"]
    assert (cpu.some.avg10, cpu.some.avg60, cpu.some.avg300) == (1.5, 0.75, 0.2)
    assert cpu.some.total_ns == 123_456_000 and cpu.full is not None and cpu.full.total_ns == 0
    assert sample.psi["memory"].full is not None and sample.psi["memory"].full.total_ns == 5000


def test_unlimited_v2_cpu_and_missing_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("\n")
    (tmp_path / "cgroup.procs").write_text("7\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 10\nuser_usec 6\nsystem_usec 4\n")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    cpu, limits = cgroup_v2.read_cpu(tmp_path)
    assert cpu is not None and cpu.periods is None
    assert limits.cpu_quota_us is None and limits.cpu_period_us == 100000
    sample = cgroup_v2.read(tmp_path)
    assert sample.memory is None and sample.io is None and sample.processes == 1
