"""The collector's own Prometheus text is what prometheus-client makes of the same samples, byte for byte,
also when it reuses the lines of the previous scrape."""

from __future__ import annotations

import dataclasses

from prometheus_client.exposition import generate_latest

from cri.stats.collector import families
from cri.stats.model import ContainerSample, PodSample, PromLabels
from cri.stats.render import LineCache, families_text
from metrics.readings import (
    CgroupSample,
    CpuReading,
    FsUsage,
    InterfaceReading,
    LimitsReading,
    MemoryReading,
    NetworkSample,
)


class _Families:
    def __init__(self, pods: list[PodSample]) -> None:
        self.pods = pods

    def collect(self):  # type: ignore[no-untyped-def]
        return families(self.pods)


def _cgroup(n: int) -> CgroupSample:
    return CgroupSample(
        timestamp_ns=1_000,
        version=1,
        cpu=CpuReading(
            usage_ns=n * 1_234_567_891, user_ns=n, system_ns=0, periods=3, throttled_periods=1, throttled_ns=n
        ),
        memory=MemoryReading(usage_bytes=10**12 + n, working_set_bytes=n, rss_bytes=n, limit_bytes=None),
        limits=LimitsReading(cpu_quota_us=50000, cpu_period_us=100000),
        processes=2,
    )


def _pods() -> list[PodSample]:
    # Label values a renderer must escape: quote, backslash, newline; an exited container (no series).
    awkward = PromLabels('c"1', "p\\od", "ns\nx", "/parent/calyx-1", "img:{0}", "1" * 64)
    running = ContainerSample(
        "1" * 64,
        "2" * 64,
        "c",
        0,
        "RUNNING",
        {},
        {},
        5,
        7_000_000_000,
        awkward,
        _cgroup(3),
        FsUsage(9, "/x/upper", 4096, 3),
        "/var",
    )
    exited = ContainerSample("3" * 64, "2" * 64, "d", 0, "EXITED", {}, {}, 5, 0, awkward)
    net = NetworkSample(
        timestamp_ns=3,
        interfaces=(
            InterfaceReading("lo", 1, 1, 1, 1, 0, 0, 0, 0),
            InterfaceReading("eth0", 500, 400, 5, 4, 1, 0, 2, 0),
        ),
    )
    pod = PodSample(
        "2" * 64,
        "p",
        "u",
        "ns",
        0,
        "READY",
        {},
        {},
        1,
        PromLabels("", "p", "ns", "/parent", "", "2" * 64),
        _cgroup(7),
        net,
        containers=(running, exited),
    )
    return [pod, PodSample("4" * 64, "q", "u", "ns", 0, "NOTREADY", {}, {}, 1, awkward)]


def test_families_text_is_generate_latest_of_the_families() -> None:
    pods = _pods()
    expected = generate_latest(_Families(pods)).decode()  # type: ignore[arg-type]
    assert 'c\\"1' in expected and "p\\\\od" in expected and "ns\\nx" in expected  # the sample needs escaping
    assert families_text(pods) == expected


def test_families_text_of_no_pods_is_the_headers_only() -> None:
    assert families_text([]) == generate_latest(_Families([])).decode()  # type: ignore[arg-type]


def _with_cpu(pod: PodSample, usage_ns: int) -> PodSample:
    """``pod`` with its running containers' CPU counter moved to ``usage_ns`` (a newer reading)."""
    containers = []
    for c in pod.containers:
        if c.cgroup is not None and c.cgroup.cpu is not None:
            cpu = dataclasses.replace(c.cgroup.cpu, usage_ns=usage_ns)
            c = dataclasses.replace(c, cgroup=dataclasses.replace(c.cgroup, cpu=cpu))
        containers.append(c)
    return dataclasses.replace(pod, containers=tuple(containers))


def test_a_cached_render_shows_new_values_and_equals_generate_latest() -> None:
    cache = LineCache()
    first = _pods()
    assert families_text(first, cache) == families_text(first)
    assert families_text(first, cache) == families_text(first)  # every line reused
    newer = [_with_cpu(first[0], 9_876_543_210), first[1]]
    text = families_text(newer, cache)
    assert text == generate_latest(_Families(newer)).decode()  # type: ignore[arg-type]
    assert text != families_text(first)
    assert 'container_cpu_usage_seconds_total{container="c\\"1",cpu="total"' in text
    assert "9.87654321\n" in text


def test_the_cache_keeps_only_what_the_latest_scrape_rendered() -> None:
    cache = LineCache()
    pods = _pods()
    families_text(pods, cache)
    running = pods[0].containers[0]
    assert set(cache.lines) == {pods[0].prom, running.prom, pods[1].prom}  # the exited one has no series
    # The container goes away, then the whole pod: their lines leave the cache with the next scrape.
    without = dataclasses.replace(pods[0], containers=())
    assert families_text([without, pods[1]], cache) == families_text([without, pods[1]])
    assert set(cache.lines) == {pods[0].prom, pods[1].prom}
    assert families_text([pods[1]], cache) == families_text([pods[1]])
    assert set(cache.lines) == {pods[1].prom}
    # A container whose labels change (another cgroup path) gets lines of its new labels only.
    moved = dataclasses.replace(running, prom=dataclasses.replace(running.prom, id="/elsewhere"))
    again = [dataclasses.replace(pods[0], containers=(moved,))]
    text = families_text(again, cache)
    assert text == families_text(again) and "/parent/calyx-1" not in text and 'id="/elsewhere"' in text
