"""The collector's own Prometheus text is what prometheus-client makes of the same samples, byte for byte."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest

from cri.stats.collector import families, families_text
from cri.stats.model import ContainerSample, PodSample, PromLabels
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
