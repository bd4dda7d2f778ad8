"""The benchmark harness's arithmetic: percentiles, summaries, target ratios, helper attribution."""

from __future__ import annotations

from bench import procs, report
from bench.sizes import SIZES
from bench.stats import Result, percentile


def test_percentile_is_a_measured_value() -> None:
    values = [float(v) for v in range(1, 21)]
    assert percentile(values, 95) == 19.0
    assert percentile(values, 50) == 10.0
    assert percentile([7.0], 95) == 7.0


def test_result_without_samples_has_no_summary() -> None:
    skipped = Result("run_pod_sandbox", "ms", status="n/a: RunPodSandbox unimplemented")
    doc = skipped.to_json()
    assert doc["median"] is None and doc["status"].startswith("n/a")
    ok = Result("x", "ms", samples=[3.0, 1.0, 2.0])
    assert ok.to_json()["min"] == 1.0 and ok.to_json()["median"] == 2.0 and ok.to_json()["p95"] == 3.0


def test_targets_ratios_and_floor() -> None:
    size = SIZES["tiny"]
    results = {
        report.CALYX: {
            "run_pod_sandbox": Result("run_pod_sandbox", "ms", samples=[40.0]),
            "container_create_start": Result("container_create_start", "ms", samples=[100.0]),
            "pull_mbps": Result("pull_mbps", "MB/s", samples=[50.0], higher_is_better=True),
        },
        report.CALYX_BUILTIN: {
            "run_pod_sandbox": Result("run_pod_sandbox", "ms", samples=[60.0]),
            "pod_teardown_2_alive": Result("pod_teardown_2_alive", "ms", samples=[30.0]),
        },
        report.REFERENCE: {
            "run_pod_sandbox": Result("run_pod_sandbox", "ms", samples=[100.0]),
            "pod_teardown_2_alive": Result("pod_teardown_2_alive", "ms", samples=[40.0]),
            "container_create_start": Result("container_create_start", "ms", samples=[80.0]),
            "pull_mbps": Result("pull_mbps", "MB/s", samples=[100.0], higher_is_better=True),
        },
        report.FLOOR: {"runc_run": Result("runc_run", "ms", samples=[60.0])},
    }
    every = report.evaluate(results, size)
    rows = {(r["goal"], r["network"]): r for r in every}
    assert len(every) == 2 * len(report.goals(size))  # every target, once per network
    run = "RunPodSandbox, one pod at a time"
    assert rows[run, "CNI"]["ratio"] == 0.4 and rows[run, "CNI"]["met"] is True
    assert rows[run, "built-in"]["ratio"] == 0.6 and rows[run, "built-in"]["met"] is False
    assert rows["pod teardown, 2 pods alive", "built-in"]["ratio"] == 0.75
    assert rows["pod teardown, 2 pods alive", "built-in"]["met"] is True
    assert rows["container create+start", "CNI"]["met"] is False  # 1.25x
    assert rows["pull throughput", "CNI"]["ratio"] == 0.5 and rows["pull throughput", "CNI"]["met"] is False
    floor = rows["container create+start vs runc run", "CNI"]
    assert floor["ratio"] == 40.0 and floor["met"] is False  # 100 ms > 60 + 30
    assert rows["pod teardown, pod with a container", "CNI"]["met"] is None  # not measured: no verdict
    assert rows["pull throughput", "built-in"]["met"] is None
    table = report.table(results, markdown=True)
    assert "| calyx / containerd | calyx-builtin / containerd |" in table
    assert "| run_pod_sandbox | 40.0 ms | 60.0 ms | 100 ms | 0.40x | 0.60x |" in table


def test_helpers_attributed_by_marker_cgroup_and_parent() -> None:
    mine = procs.Proc(10_000_001, "conmon", ("conmon", "-b", "/tmp/cxb-run/calyx/x"), 1, 1)
    child = procs.Proc(10_000_002, "catatonit", ("catatonit", "-P"), 2, 10_000_001)
    other = procs.Proc(10_000_003, "conmon", ("conmon", "-b", "/tmp/someone-else"), 3, 1)
    owned = procs.owned([mine, child, other], ["/tmp/cxb-run/calyx"], "/cxbench-ab-c")
    assert {p.pid for p in owned} == {mine.pid, child.pid}
