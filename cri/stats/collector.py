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
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from cri.stats.families import FAMILIES, Family, rows
from cri.stats.model import ContainerSample, PodSample

log = logging.getLogger("cri.stats")


class RuntimeCollector:
    def __init__(self, stats: Any) -> None:
        self.stats = stats
        self.last_scrape_seconds = 0.0

    def describe(self) -> list[Metric]:
        """No samples at registration time (the registry calls this instead of collect)."""
        return []

    def _sample(self) -> list[PodSample]:
        try:
            pods: list[PodSample] = self.stats.all_pods()
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
        yield from states(self.stats.runtime)
        yield self._duration(start)

    def render_text(self) -> bytes:
        """What ``generate_latest`` makes of ``collect()``, byte for byte, written directly: the
        container_* series are most of a scrape (~50 per container), and prometheus-client builds a
        Sample and a label dict for each, then validates, sorts and escapes every label again."""
        start = time.monotonic()
        text = families_text(self._sample())
        rest = list(states(self.stats.runtime))
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


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _header(family: Family) -> str:
    """HELP and TYPE lines as the text format has them (counters named with their _total)."""
    kind = "counter" if family.counter and family.name.endswith("_total") else "gauge"
    doc = family.help.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {family.name} {doc}\n# TYPE {family.name} {kind}\n"


def _line_format(family: Family) -> str:
    """A str.format template of one series line: labels sorted by name as generate_latest sorts them,
    each filled from its position in (base labels + the family's own), then the value."""
    names = family.label_names
    order = sorted(range(len(names)), key=lambda i: names[i])
    labels = ",".join(f'{names[i]}="{{{i}}}"' for i in order)
    name = family.name.replace("{", "{{").replace("}", "}}")
    return f"{name}{{{{{labels}}}}} {{{len(names)}}}\n"


_FORMATS = {family.name: (_header(family), _line_format(family)) for family in FAMILIES}


def families_text(pods: list[PodSample]) -> str:
    """The container_* families of ``pods`` in the Prometheus text format (as ``families`` gives them
    to prometheus-client): pod-level series, then running containers', family by family."""
    lines: dict[str, list[str]] = {family.name: [] for family in FAMILIES}
    for pod in pods:
        subjects: list[ContainerSample | PodSample] = [pod]
        subjects.extend(c for c in pod.containers if c.cgroup is not None)
        for subject in subjects:
            base = tuple(_escape(v) for v in subject.prom.values())
            for family in FAMILIES:
                template = _FORMATS[family.name][1]
                out = lines[family.name]
                for extra, value in family.values(subject):
                    labels = base + tuple(_escape(v) for v in extra) if extra else base
                    out.append(template.format(*labels, floatToGoString(value)))
    parts: list[str] = []
    for family in FAMILIES:
        parts.append(_FORMATS[family.name][0])
        parts.extend(lines[family.name])
    return "".join(parts)


def states(runtime: Any) -> Iterator[Metric]:
    pods = getattr(runtime, "pods", None)
    containers = getattr(runtime, "containers", None)
    if pods is not None:
        family = GaugeMetricFamily("calyx_pods", "Pod sandboxes known to Calyx, by state.", labels=["state"])
        counts = Counter(p.state for p in pods.list())
        for state in ("READY", "NOTREADY"):
            family.add_metric([state], counts.get(state, 0))
        yield family
    if containers is not None:
        family = GaugeMetricFamily(
            "calyx_containers", "Containers known to Calyx, by state.", labels=["state"]
        )
        counts = Counter(c.state for c in containers.list())
        for state in ("CREATED", "RUNNING", "EXITED", "UNKNOWN"):
            family.add_metric([state], counts.get(state, 0))
        yield family
