"""Timing of a metrics scrape, for bench/: how long sampling and rendering every series takes.

``time_scrape`` runs the same collector /metrics uses (every pod and container sampled once, every
family built, the text exposition rendered) against a live StatsService. ``time_cgroup_reads`` times the
readers alone over many real cgroups made for the purpose (one sleeping process each), so the cost per
container can be measured without a daemon or images.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from cri.stats.collector import RuntimeCollector
from metrics.cgroup import V1_CONTROLLERS, V1_ROOT, read_cgroup


@dataclass(frozen=True)
class ScrapeTiming:
    samples_s: tuple[float, ...]
    series: int
    bytes: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)


def time_scrape(stats: Any, repeats: int = 5) -> ScrapeTiming:
    """Render the runtime collector's exposition ``repeats`` times (Calyx's own counters left out)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(stats))
    samples = []
    text = b""
    for _ in range(repeats):
        start = time.perf_counter()
        text = generate_latest(registry)
        samples.append(time.perf_counter() - start)
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    return ScrapeTiming(tuple(samples), series, len(text))


def time_cgroup_reads(count: int = 200, repeats: int = 5) -> ScrapeTiming:
    """Read ``count`` real v1 cgroups (each holding one sleeping process) ``repeats`` times.

    The cgroups (calyx-bench-<pid>-<n> in every v1 hierarchy) and processes are removed before returning.
    """
    made: list[dict[str, Path]] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(count):
            dirs = {c: V1_ROOT / c / f"calyx-bench-{os.getpid()}-{n}" for c in V1_CONTROLLERS}
            made.append(dirs)
            for path in dirs.values():
                path.mkdir()
            sleeper = subprocess.Popen(["sleep", "3600"])
            procs.append(sleeper)
            for path in dirs.values():
                (path / "cgroup.procs").write_text(str(sleeper.pid))
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            for dirs in made:
                read_cgroup(dirs)
            samples.append(time.perf_counter() - start)
        return ScrapeTiming(tuple(samples), count, 0)
    finally:
        for sleeper in procs:
            sleeper.kill()
            sleeper.wait()
        for dirs in made:
            for path in dirs.values():
                for _ in range(50):
                    try:
                        path.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.02)
