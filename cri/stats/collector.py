"""The Prometheus collector: one sample of every pod and container per scrape, then every family.

prometheus-client calls ``collect()`` once per scrape; the samples are taken first (each cgroup, netns
and writable layer read once) and every family is built from them, so there is no re-reading per
metric. Pods and containers by state are counted from the same listing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from cri.containers.model import CREATED, EXITED, RUNNING, UNKNOWN
from cri.pods.model import NOTREADY, READY
from cri.stats.families import FAMILIES, rows
from cri.stats.model import ContainerSample, PodSample
from cri.stats.render import LineCache, families_text
from cri.stats.sources import ContainerSource, PodSource, Sampler

log = logging.getLogger("cri.stats")


class RuntimeCollector:
    def __init__(self, sampler: Sampler, pods: PodSource, containers: ContainerSource) -> None:
        self.sampler = sampler
        self.pods = pods
        self.containers = containers
        self.last_scrape_seconds = 0.0
        self.lines = LineCache()  # the text of the latest scrape, reused by the next (render.py)

    def describe(self) -> list[Metric]:
        """No samples at registration time (the registry calls this instead of collect)."""
        return []

    def _sample(self) -> list[PodSample]:
        try:
            pods: list[PodSample] = self.sampler.all_pods()
        except Exception:  # keep serving Calyx's own metrics; the log says what broke
            log.exception("sampling for a scrape failed")
            pods = []
        return pods

    def _duration(self, start: float) -> Metric:
        self.last_scrape_seconds = time.monotonic() - start
        duration = GaugeMetricFamily(
            "calyx_stats_scrape_duration_seconds",
            "Time taken to sample every pod and container for a scrape.",
        )
        duration.add_metric([], self.last_scrape_seconds)
        return duration

    def collect(self) -> Iterator[Metric]:
        start = time.monotonic()
        yield from families(self._sample())
        yield from states(self.pods, self.containers)
        yield self._duration(start)

    def render_text(self) -> bytes:
        """What ``generate_latest`` makes of ``collect()``, byte for byte, written directly (render.py)."""
        start = time.monotonic()
        text = families_text(self._sample(), self.lines)
        rest = list(states(self.pods, self.containers))
        rest.append(self._duration(start))
        return text.encode() + generate_latest(_Listed(rest))


def families(pods: list[PodSample]) -> Iterator[Metric]:
    """The container_* families of ``pods``: pod-level series, then running containers'."""
    metrics: dict[str, Metric] = {}
    for family in FAMILIES:
        if family.counter and family.name.endswith("_total"):
            metrics[family.name] = CounterMetricFamily(
                family.name, family.help, labels=list(family.label_names)
            )
        else:
            metrics[family.name] = GaugeMetricFamily(
                family.name, family.help, labels=list(family.label_names)
            )
    subjects: list[ContainerSample | PodSample] = []
    for pod in pods:
        subjects.append(pod)
        subjects.extend(c for c in pod.containers if c.cgroup is not None)
    for subject in subjects:
        for family, labels, value in rows(subject):
            metrics[family.name].add_metric(list(labels), value)  # type: ignore[attr-defined]
    yield from metrics.values()


class _Listed:
    """Metric families already made, as the collector ``generate_latest`` wants."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def states(pods: PodSource, containers: ContainerSource) -> Iterator[Metric]:
    family = GaugeMetricFamily("calyx_pods", "Pod sandboxes known to Calyx, by state.", labels=["state"])
    counts = Counter(p.state for p in pods.list())
    for state in (READY, NOTREADY):
        family.add_metric([state], counts.get(state, 0))
    yield family
    family = GaugeMetricFamily("calyx_containers", "Containers known to Calyx, by state.", labels=["state"])
    counts = Counter(c.state for c in containers.list())
    for state in (CREATED, RUNNING, EXITED, UNKNOWN):
        family.add_metric([state], counts.get(state, 0))
    yield family
