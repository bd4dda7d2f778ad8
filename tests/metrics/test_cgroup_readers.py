"""The cgroup readers against real cgroups holding real processes with known CPU and memory use."""

from __future__ import annotations

import os

import pytest

from metrics import cgroup_v2
from metrics.cgroup import is_v2, read_cgroup

MiB = 1024 * 1024


def test_v1_cpu_seconds_burnt_show_as_usage(workloads, v1_cgroup):
    work = workloads()
    cgroup = v1_cgroup()
    cgroup.add(work.pid)
    before = read_cgroup(cgroup.dirs)
    assert before.version == 1
    assert before.cpu is not None
    work.run("burn 2")
    after = read_cgroup(cgroup.dirs)
    assert after.cpu is not None
    burnt = (after.cpu.usage_ns - before.cpu.usage_ns) / 1e9
    # The process counted 2 s of its own CPU time; the cgroup saw that plus reading a line.
    assert 1.95 <= burnt <= 2.5, burnt
    assert after.cpu.user_ns is not None and after.cpu.system_ns is not None
    # user+system come in clock ticks: the burn is user time.
    assert after.cpu.user_ns - before.cpu.user_ns >= 1.5e9
    assert after.timestamp_ns > before.timestamp_ns
    assert after.processes == 1


def test_v1_memory_held_is_in_working_set_and_rss(workloads, v1_cgroup):
    work = workloads()
    cgroup = v1_cgroup()
    cgroup.add(work.pid)
    before = read_cgroup(cgroup.dirs)
    assert before.memory is not None
    work.run(f"hold {64 * MiB}")
    after = read_cgroup(cgroup.dirs)
    memory = after.memory
    assert memory is not None
    grown = memory.working_set_bytes - before.memory.working_set_bytes
    assert 63 * MiB <= grown <= 80 * MiB, grown / MiB
    assert memory.rss_bytes is not None and memory.rss_bytes >= 64 * MiB
    assert memory.usage_bytes >= memory.working_set_bytes
    assert memory.page_faults is not None and memory.page_faults >= (64 * MiB) // 4096
    assert memory.limit_bytes is None  # no limit set: reported as unlimited, not 2**63
    assert memory.available_bytes is None
    assert memory.oom_events == 0


def test_v1_limits_and_failcnt(workloads, v1_cgroup):
    work = workloads()
    cgroup = v1_cgroup(
        memory__limit_in_bytes=str(256 * MiB),
        cpu__cfs_period_us="100000",
        cpu__cfs_quota_us="10000",
        pids__max="64",
    )
    cgroup.add(work.pid)
    # A tenth of a CPU: a process always runnable uses up its 10 ms early in a period and waits.
    work.run("burn 0.2")
    sample = read_cgroup(cgroup.dirs)
    assert sample.limits.cpu_quota_us == 10000
    assert sample.limits.cpu_period_us == 100000
    assert sample.limits.pids_limit == 64
    assert sample.memory is not None and sample.memory.limit_bytes == 256 * MiB
    assert sample.memory.available_bytes is not None
    assert 0 < sample.memory.available_bytes <= 256 * MiB
    assert sample.cpu is not None and sample.cpu.periods is not None and sample.cpu.periods > 0
    assert sample.cpu.throttled_periods is not None and sample.cpu.throttled_periods > 0


def test_v1_oom_kill_is_counted(workloads, v1_cgroup):
    work = workloads()
    cgroup = v1_cgroup(memory__limit_in_bytes=str(48 * MiB))
    cgroup.add(work.pid)
    with pytest.raises(RuntimeError):
        work.run(f"hold {96 * MiB}")  # killed by the OOM killer, as intended
    work.proc.wait(30)
    sample = read_cgroup(cgroup.dirs)
    assert sample.memory is not None
    assert sample.memory.oom_events == 1
    assert sample.memory.failcnt is not None and sample.memory.failcnt > 0
    assert sample.processes == 0


def test_vanished_cgroup_reads_as_empty(v1_cgroup):
    cgroup = v1_cgroup()
    for path in cgroup.dirs.values():
        path.rmdir()
    sample = read_cgroup(cgroup.dirs)
    assert sample.cpu is None and sample.memory is None and sample.processes is None


def test_v2_cpu_usage_from_core_cpu_stat(workloads, v2_cgroup):
    work = workloads()
    path = v2_cgroup()
    (path / "cgroup.procs").write_text(str(work.pid))
    dirs = {"unified": path}
    assert is_v2(dirs)
    work.run("burn 1")
    sample = read_cgroup(dirs)
    assert sample.version == 2
    assert sample.cpu is not None
    assert 0.95e9 <= sample.cpu.usage_ns <= 1.5e9
    assert sample.cpu.user_ns is not None and sample.cpu.user_ns >= 0.8e9
    assert sample.processes == 1  # no pids controller here: counted from cgroup.procs
    assert sample.memory is None  # the memory controller is bound to v1 on this host


def test_v2_weight_to_shares_round_trips_the_usual_mapping():
    # The usual shares -> weight mapping: 1 + ((shares - 2) * 9999) // 262142.
    for shares in (2, 1024, 262144):
        weight = 1 + ((shares - 2) * 9999) // 262142
        assert abs(cgroup_v2.weight_to_shares(weight) - shares) <= 27


def test_pressure_from_the_hybrid_cgroup2_directory(workloads, v1_cgroup):
    cgroup = v1_cgroup(unified=True)
    cpu = min(os.sched_getaffinity(0))
    pair = [workloads(), workloads()]
    for work in pair:
        os.sched_setaffinity(work.pid, {cpu})  # two spinners on one CPU: one always waits
        cgroup.add(work.pid)
    before = read_cgroup(cgroup.dirs)
    assert set(before.psi) == {"cpu", "memory", "io"}
    for work in pair:
        work.send("burn 1")
    for work in pair:
        work.wait_done()
    after = read_cgroup(cgroup.dirs)
    waited = after.psi["cpu"].some.total_ns - before.psi["cpu"].some.total_ns
    assert waited >= 0.5e9, waited  # ~2 s of wall time with a runnable task waiting
    assert after.cpu is not None and after.cpu.usage_ns >= 1.9e9
    # Without the cgroup2 directory there is no PSI to read: left out, not zero.
    plain = {k: v for k, v in cgroup.dirs.items() if k != "unified"}
    assert read_cgroup(plain).psi == {}
