"""How much each benchmark does: ``full`` for the numbers we publish, ``tiny`` to check the harness."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    name: str
    reps: int  # repetitions of the single-object latencies
    exec_reps: int
    parallel_pods: int
    parallel_reps: int
    pods: int  # pods of the population stage (daemon RSS "with N pods", helper memory)
    alive_pods: int  # pods alive while pods_alive times one more pod's run and teardown
    list_counts: tuple[int, int]  # containers at which List* is measured
    scrape_containers: int
    list_reps: int  # calls of ListContainerStats and of the scrape
    fast_list_reps: int  # calls of ListContainers and ListPodSandbox (sub-ms: many, for steady medians)
    pull_mb: int
    pull_reps: int

    def population_targets(self) -> list[int]:
        """Container counts the population stage stops at, in order."""
        return sorted({*self.list_counts, self.scrape_containers})


SIZES = {
    "tiny": Size("tiny", 2, 3, 3, 1, 2, 2, (2, 4), 3, 3, 3, 2, 1),
    "full": Size("full", 20, 30, 10, 5, 100, 20, (100, 500), 200, 20, 500, 50, 5),
}


def benchmark_names(size: Size) -> list[str]:
    """Every key a run writes for a runtime under test, whatever it supports."""
    low, high = size.list_counts
    names = [
        "daemon_rss_idle",
        "pull_mbps",
        "pull_time",
        "pull_download",
        "pull_unpack",
        "run_pod_sandbox",
        "pod_teardown_empty",
        f"run_pod_sandbox_{size.alive_pods}_alive",
        f"pod_teardown_{size.alive_pods}_alive",
        "run_pod_sandbox_shared_pid",
        "helper_rss_per_pod_shared_pid",
        "helper_pss_per_pod_shared_pid",
        "container_create_start",
        "container_stop_remove",
        "pod_with_container",
        "pod_teardown",
        "exec_sync",
        f"parallel_{size.parallel_pods}_pods",
        "helper_rss_per_pod",
        "helper_pss_per_pod",
        "helper_rss_per_container",
        "helper_pss_per_container",
        f"daemon_rss_{size.pods}_pods",
        f"metrics_scrape_{size.scrape_containers}",
    ]
    for n in (low, high):
        names += [f"list_containers_{n}", f"list_pod_sandbox_{n}", f"list_container_stats_{n}"]
    return names
