"""The benchmark command works end to end on a tiny size against a Calyx it starts itself.

No timing is asserted (numbers live in bench/RESULTS.md); this checks that the harness runs, writes
the JSON every consumer reads with all its keys, and leaves nothing behind on the host.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.sizes import SIZES, benchmark_names
from tests import cgroup_files

pytestmark = pytest.mark.slow

SUMMARY_KEYS = {"unit", "status", "n", "min", "median", "p95", "samples", "higher_is_better"}


def leftovers(tag: str, base: str) -> list[str]:
    """What a run named ``tag`` with temp dir ``base`` left on the host (other runs may go on meanwhile)."""
    found = [str(c) for top in cgroup_files.dirs("") for c in top.glob(f"cxbench-{tag}-*")]
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    found += [m for m in mounts if m == base or m.startswith(base + "/")]
    found += [p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(f"cxb{tag}")]
    for save in ("iptables-save", "ip6tables-save"):  # the built-in network's chains carry the bridge name
        rules = subprocess.run([save], capture_output=True, text=True).stdout.splitlines()
        found += [line for line in rules if f"-cxb{tag}" in line]
    if Path(base).exists():
        found.append(base)
    return found


def test_bench_tiny_against_calyx(short_tmp: Path) -> None:
    out_dir = short_tmp / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "tiny", "--out", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "run_pod_sandbox" in run.stdout  # the table was printed

    doc = json.loads((out_dir / "latest.json").read_text())
    assert {"date", "size", "machine", "versions"} <= doc["meta"].keys()
    assert doc["meta"]["size"] == "tiny"
    assert {"calyx", "runc", "conmon", "containerd"} <= doc["meta"]["versions"].keys()
    assert "containerd" not in doc["results"]  # no reference was asked for

    assert doc["meta"]["networks"]["calyx-builtin"].startswith("built-in")
    for runtime in ("calyx", "calyx-builtin"):  # Calyx on a CNI conflist and on the built-in network
        results = doc["results"][runtime]
        assert set(results) == set(benchmark_names(SIZES["tiny"]))
        for name, result in results.items():
            assert result.keys() >= SUMMARY_KEYS, (runtime, name)
            status = result["status"]
            assert status == "ok" or status.startswith(("n/a: ", "error: ")), (runtime, name, status)
            if status == "ok":
                assert result["n"] == len(result["samples"]) > 0, (runtime, name)
                assert result["min"] <= result["median"] <= result["p95"], (runtime, name)
            else:
                assert result["median"] is None, (runtime, name)
        # Pods run on either network, one at a time and with others alive (no other pod alive in
        # the first loop: the harness says how many it found).
        for name in (
            "run_pod_sandbox",
            "pod_teardown_empty",
            "run_pod_sandbox_2_alive",
            "pod_teardown_2_alive",
        ):
            assert results[name]["status"] == "ok", (runtime, name, results[name]["status"])
        assert results["run_pod_sandbox"]["extra"]["pods_alive"] == 0
        assert results["run_pod_sandbox_2_alive"]["extra"]["pods_alive"] == 2
    calyx = doc["results"]["calyx"]
    # Calyx always starts, so its idle memory is always measured; the floor needs only runc.
    assert calyx["daemon_rss_idle"]["status"] == "ok"
    floor = doc["results"]["floor"]
    assert floor["runc_run"]["status"] == floor["runc_create_start"]["status"] == "ok"
    # The gRPC floor answered each fast List call with Calyx's own reply, once per Calyx call.
    for n in SIZES["tiny"].list_counts:
        for rpc in ("list_containers", "list_pod_sandbox"):
            ours, bare = calyx[f"{rpc}_{n}"], floor[f"grpc_{rpc}_{n}"]
            assert bare["status"] == "ok" and bare["n"] == ours["n"] == SIZES["tiny"].fast_list_reps, rpc
    goals = {(row["goal"], row["network"]) for row in doc["targets"]}
    for network in ("CNI", "built-in"):
        assert {("RunPodSandbox, one pod at a time", network), ("pull throughput", network)} <= goals

    md = next(out_dir.glob("bench-*.md")).read_text()
    assert "| benchmark |" in md and "| target |" in md
    assert leftovers(doc["meta"]["run"]["tag"], doc["meta"]["run"]["base"]) == []


def test_bench_stopped_by_sigterm_leaves_nothing_behind(short_tmp: Path) -> None:
    """A run ended by SIGTERM mid-benchmark (timeout(1), a cancelled job) cleans up like one that ends."""
    log = short_tmp / "bench.log"
    with log.open("w") as out:  # a file, not a pipe: processes a run leaks must not hold the test up
        run = subprocess.Popen(
            [sys.executable, "-m", "bench", "--size", "tiny"],
            stdout=subprocess.DEVNULL,
            stderr=out,
            cwd=Path(__file__).resolve().parents[2],
        )
    try:
        deadline = time.monotonic() + 300
        while "benchmarking" not in log.read_text():  # Calyx and the registry are up, benchmarks begin
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        code = run.wait(120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = log.read_text()
    found = re.search(r"run tag (\w+), base (\S+)", text)
    assert found, text[-3000:]
    tag, base = found.groups()
    assert code != 0, text[-3000:]
    assert leftovers(tag, base) == [], text[-3000:]
    alive = subprocess.run(["pgrep", "-f", base], capture_output=True, text=True).stdout.split()
    assert alive == [], text[-3000:]
