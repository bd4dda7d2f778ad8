"""Samples to CRI messages and metric rows: absent readings stay absent, labels line up, sums add up."""

from __future__ import annotations

from cri.api import api_pb2 as pb
from cri.stats import convert
from cri.stats.aggregate import sum_samples
from cri.stats.families import FAMILIES, rows
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

LABELS = PromLabels("c", "p", "ns", "/parent/calyx-1", "img", "1" * 64)


def cgroup(usage_ns: int, ws: int, limit: int | None = None) -> CgroupSample:
    return CgroupSample(
        timestamp_ns=1_000,
        version=1,
        cpu=CpuReading(usage_ns=usage_ns, user_ns=usage_ns, system_ns=0, periods=3, throttled_periods=1),
        memory=MemoryReading(usage_bytes=ws + 10, working_set_bytes=ws, rss_bytes=ws, limit_bytes=limit),
        limits=LimitsReading(cpu_quota_us=None, cpu_period_us=100000),
        processes=2,
    )


def container(sample: CgroupSample | None, fs: FsUsage | None = None) -> ContainerSample:
    return ContainerSample(
        id="1" * 64,
        pod_id="2" * 64,
        name="c",
        attempt=1,
        state="RUNNING" if sample else "EXITED",
        labels={"a": "b"},
        annotations={},
        created_at_ns=5,
        started_at_ns=7_000_000_000,
        prom=LABELS,
        cgroup=sample,
        fs=fs,
        fs_mountpoint="/var",
        cpu_nano_cores=None,
    )


def test_an_exited_container_has_attributes_and_its_layer_only():
    stats = convert.container_stats(container(None, FsUsage(9, "/x/upper", 4096, 3)))
    assert stats.attributes.metadata == pb.ContainerMetadata(name="c", attempt=1)
    assert not stats.HasField("cpu") and not stats.HasField("memory") and not stats.HasField("swap")
    assert stats.writable_layer.used_bytes.value == 4096 and stats.writable_layer.fs_id.mountpoint == "/var"
    assert list(rows(container(None))) == []  # nothing running: no series, not zeros


def test_rate_and_limits_are_set_only_when_known():
    stats = convert.container_stats(container(cgroup(5, 100)))
    assert not stats.cpu.HasField("usage_nano_cores")
    assert not stats.memory.HasField("available_bytes")
    limited = convert.container_stats(container(cgroup(5, 100, limit=1000)))
    assert limited.memory.available_bytes.value == 900
    names = {f.name: v for f, _, v in rows(container(cgroup(2_500_000_000, 100)))}
    assert names["container_cpu_usage_seconds_total"] == 2.5
    assert names["container_spec_memory_limit_bytes"] == 0  # unlimited
    assert "container_spec_cpu_quota" not in names  # no quota set
    assert names["container_start_time_seconds"] == 7.0


def test_pod_rows_carry_interfaces_but_loopback_and_labels_match_descriptors():
    net = NetworkSample(
        timestamp_ns=3,
        interfaces=(
            InterfaceReading("lo", 1, 1, 1, 1, 0, 0, 0, 0),
            InterfaceReading("eth0", 500, 400, 5, 4, 1, 0, 2, 0),
        ),
    )
    pod = PodSample(
        id="2" * 64,
        name="p",
        uid="u",
        namespace="ns",
        attempt=0,
        state="READY",
        labels={},
        annotations={},
        created_at_ns=1,
        prom=PromLabels("", "p", "ns", "/parent", "", "2" * 64),
        cgroup=cgroup(10, 20),
        network=net,
    )
    found = list(rows(pod))
    rx = [(labels, value) for f, labels, value in found if f.name == "container_network_receive_bytes_total"]
    assert rx == [(("", "p", "ns", "/parent", "", "2" * 64, "eth0"), 500.0)]
    descriptors = {d.name: len(d.label_keys) for d in convert.metric_descriptors()}
    assert len(descriptors) == len(FAMILIES)
    for family, labels, _ in found:
        assert len(labels) == descriptors[family.name]
    stats = convert.pod_stats(pod)
    assert stats.linux.network.default_interface.name == "eth0"
    assert [i.name for i in stats.linux.network.interfaces] == ["eth0"]
    assert stats.linux.process.process_count.value == 2
    metrics = convert.pod_metrics(pod)
    throttled = [m for m in metrics.metrics if m.name == "container_cpu_cfs_throttled_periods_total"]
    assert throttled[0].value.value == 1 and throttled[0].metric_type == pb.COUNTER
    assert throttled[0].timestamp == 0  # gathered live


def test_cached_writable_layer_metrics_carry_their_collection_time():
    sample = container(cgroup(5, 100), FsUsage(9, "/x/upper", 4096, 3))
    pod = PodSample("2" * 64, "p", "u", "ns", 0, "READY", {}, {}, 1, LABELS, containers=(sample,))
    (c,) = convert.pod_metrics(pod).container_metrics
    stamps = {m.name: m.timestamp for m in c.metrics}
    assert stamps["container_fs_usage_bytes"] == 9 and stamps["container_fs_inodes_usage"] == 9
    assert stamps["container_memory_usage_bytes"] == 0


def test_sum_of_samples_adds_usage_and_leaves_limits_out():
    total = sum_samples([cgroup(5, 100, limit=1000), cgroup(7, 50, limit=1000)])
    assert total is not None and total.cpu is not None and total.memory is not None
    assert total.cpu.usage_ns == 12 and total.cpu.periods == 6
    assert total.memory.working_set_bytes == 150 and total.memory.limit_bytes is None
    assert total.processes == 4
    assert sum_samples([]) is None
