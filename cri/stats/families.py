"""The cAdvisor-named container_* metric families, defined once for both of their consumers.

Each family says how to get its values out of a sample; ListMetricDescriptors / ListPodSandboxMetrics
(CRI, integer values) and the Prometheus collector (float values) both walk this table, so a series
has the same name, labels and meaning wherever it is read. Labels are cAdvisor's (``container``,
``pod``, ``namespace``, ``id``, ``image``, ``name``) followed by the family's own (``cpu``,
``interface``, ``device``). A family without a value for a sample (a controller this host lacks, a
container that is not running) yields nothing for it rather than a zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cri.stats.model import ContainerSample, PodSample, PromLabels
from metrics.readings import CgroupSample, FsUsage, NetworkSample

Subject = ContainerSample | PodSample
Value = tuple[tuple[str, ...], float]  # (the family's own label values, value)

NS = 1e9


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    counter: bool
    extra_labels: tuple[str, ...]
    values: Callable[[Subject], Iterator[Value]]
    seconds: bool = False  # float seconds in Prometheus; CRI's integer value is whole seconds
    cached: bool = False  # from a cached reading (the writable-layer walk), not read live

    @property
    def label_names(self) -> tuple[str, ...]:
        return PromLabels.NAMES + self.extra_labels


def _cgroup(s: Subject) -> CgroupSample | None:
    return s.cgroup


def _network(s: Subject) -> NetworkSample | None:
    return s.network if isinstance(s, PodSample) else None


def _fs(s: Subject) -> FsUsage | None:
    return s.fs if isinstance(s, ContainerSample) else None


def _cpu(field: str, scale: float = 1.0, extra: tuple[str, ...] = ()) -> Callable[[Subject], Iterator[Value]]:
    def values(s: Subject) -> Iterator[Value]:
        cg = _cgroup(s)
        value = getattr(cg.cpu, field) if cg is not None and cg.cpu is not None else None
        if value is not None:
            yield extra, value / scale

    return values


def _memory(field: str) -> Callable[[Subject], Iterator[Value]]:
    def values(s: Subject) -> Iterator[Value]:
        cg = _cgroup(s)
        value = getattr(cg.memory, field) if cg is not None and cg.memory is not None else None
        if value is not None:
            yield (), float(value)

    return values


def _interfaces(field: str) -> Callable[[Subject], Iterator[Value]]:
    def values(s: Subject) -> Iterator[Value]:
        net = _network(s)
        if net is None:
            return
        for iface in net.interfaces:
            if iface.name != "lo":  # cAdvisor leaves loopback out too
                yield (iface.name,), float(getattr(iface, field))

    return values


def _io(field: str) -> Callable[[Subject], Iterator[Value]]:
    def values(s: Subject) -> Iterator[Value]:
        cg = _cgroup(s)
        if cg is not None and cg.io is not None:
            yield ("",), float(getattr(cg.io, field))

    return values


def _fs_value(field: str) -> Callable[[Subject], Iterator[Value]]:
    def values(s: Subject) -> Iterator[Value]:
        fs = _fs(s)
        if fs is not None:
            yield (s.fs_mountpoint if isinstance(s, ContainerSample) else "",), float(getattr(fs, field))

    return values


def _pressure(resource: str, kind: str) -> Callable[[Subject], Iterator[Value]]:
    def values(s: Subject) -> Iterator[Value]:
        cg = _cgroup(s)
        reading = cg.psi.get(resource) if cg is not None else None
        line = getattr(reading, kind) if reading is not None else None
        if line is not None:
            yield (), line.total_ns / NS

    return values


def _processes(s: Subject) -> Iterator[Value]:
    cg = _cgroup(s)
    if cg is not None and cg.processes is not None:
        yield (), float(cg.processes)


def _memory_limit(s: Subject) -> Iterator[Value]:
    cg = _cgroup(s)
    if cg is not None and cg.memory is not None:
        yield (), float(cg.memory.limit_bytes or 0)  # cAdvisor: 0 means unlimited


def _limit(field: str) -> Callable[[Subject], Iterator[Value]]:
    def values(s: Subject) -> Iterator[Value]:
        cg = _cgroup(s)
        value = getattr(cg.limits, field) if cg is not None else None
        if value is not None:
            yield (), float(value)

    return values


def _start_time(s: Subject) -> Iterator[Value]:
    started = s.started_at_ns if isinstance(s, ContainerSample) else s.created_at_ns
    if started and (s.cgroup is not None or isinstance(s, PodSample)):
        yield (), started / NS


def _last_seen(s: Subject) -> Iterator[Value]:
    if s.cgroup is not None:
        yield (), s.cgroup.timestamp_ns / NS


FAMILIES: tuple[Family, ...] = (
    Family(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed, in seconds.",
        True,
        ("cpu",),
        _cpu("usage_ns", NS, ("total",)),
        seconds=True,
    ),
    Family(
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed, in seconds.",
        True,
        (),
        _cpu("user_ns", NS),
        seconds=True,
    ),
    Family(
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed, in seconds.",
        True,
        (),
        _cpu("system_ns", NS),
        seconds=True,
    ),
    Family(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        True,
        (),
        _cpu("periods"),
    ),
    Family(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        True,
        (),
        _cpu("throttled_periods"),
    ),
    Family(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled, in seconds.",
        True,
        (),
        _cpu("throttled_ns", NS),
        seconds=True,
    ),
    Family(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        False,
        (),
        _memory("usage_bytes"),
    ),
    Family(
        "container_memory_working_set_bytes",
        "Current working set in bytes (usage minus inactive file cache).",
        False,
        (),
        _memory("working_set_bytes"),
    ),
    Family(
        "container_memory_rss", "Size of RSS (anonymous memory) in bytes.", False, (), _memory("rss_bytes")
    ),
    Family(
        "container_memory_cache", "Number of bytes of page cache memory.", False, (), _memory("cache_bytes")
    ),
    Family(
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        False,
        (),
        _memory("mapped_file_bytes"),
    ),
    Family("container_memory_swap", "Container swap usage in bytes.", False, (), _memory("swap_bytes")),
    Family(
        "container_memory_failcnt",
        "Number of times memory usage hit the limit.",
        True,
        (),
        _memory("failcnt"),
    ),
    Family(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        True,
        (),
        _memory("oom_events"),
    ),
    Family(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        True,
        ("interface",),
        _interfaces("rx_bytes"),
    ),
    Family(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        True,
        ("interface",),
        _interfaces("tx_bytes"),
    ),
    Family(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        True,
        ("interface",),
        _interfaces("rx_packets"),
    ),
    Family(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        True,
        ("interface",),
        _interfaces("tx_packets"),
    ),
    Family(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        True,
        ("interface",),
        _interfaces("rx_errors"),
    ),
    Family(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        True,
        ("interface",),
        _interfaces("tx_errors"),
    ),
    Family(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        True,
        ("interface",),
        _interfaces("rx_dropped"),
    ),
    Family(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        True,
        ("interface",),
        _interfaces("tx_dropped"),
    ),
    Family(
        "container_fs_usage_bytes",
        "Number of bytes consumed by the container's writable layer on this filesystem.",
        False,
        ("device",),
        _fs_value("used_bytes"),
        cached=True,
    ),
    Family(
        "container_fs_inodes_usage",
        "Number of inodes used by the container's writable layer.",
        False,
        ("device",),
        _fs_value("inodes_used"),
        cached=True,
    ),
    Family(
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read from block devices.",
        True,
        ("device",),
        _io("read_bytes"),
    ),
    Family(
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written to block devices.",
        True,
        ("device",),
        _io("write_bytes"),
    ),
    Family(
        "container_pressure_cpu_waiting_seconds_total",
        "Total time duration some tasks waited for cpu (pressure stall information).",
        True,
        (),
        _pressure("cpu", "some"),
        seconds=True,
    ),
    Family(
        "container_pressure_cpu_stalled_seconds_total",
        "Total time duration all non-idle tasks were stalled for cpu (pressure stall information).",
        True,
        (),
        _pressure("cpu", "full"),
        seconds=True,
    ),
    Family(
        "container_pressure_memory_waiting_seconds_total",
        "Total time duration some tasks waited for memory (pressure stall information).",
        True,
        (),
        _pressure("memory", "some"),
        seconds=True,
    ),
    Family(
        "container_pressure_memory_stalled_seconds_total",
        "Total time duration all non-idle tasks were stalled for memory (pressure stall information).",
        True,
        (),
        _pressure("memory", "full"),
        seconds=True,
    ),
    Family(
        "container_pressure_io_waiting_seconds_total",
        "Total time duration some tasks waited for io (pressure stall information).",
        True,
        (),
        _pressure("io", "some"),
        seconds=True,
    ),
    Family(
        "container_pressure_io_stalled_seconds_total",
        "Total time duration all non-idle tasks were stalled for io (pressure stall information).",
        True,
        (),
        _pressure("io", "full"),
        seconds=True,
    ),
    Family("container_processes", "Number of processes running inside the container.", False, (), _processes),
    Family(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container (0: unlimited).",
        False,
        (),
        _memory_limit,
    ),
    Family("container_spec_cpu_quota", "CPU quota of the container.", False, (), _limit("cpu_quota_us")),
    Family("container_spec_cpu_period", "CPU period of the container.", False, (), _limit("cpu_period_us")),
    Family("container_spec_cpu_shares", "CPU share of the container.", False, (), _limit("cpu_shares")),
    Family(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        False,
        (),
        _start_time,
    ),
    Family(
        "container_last_seen",
        "Last time the container was seen by the exporter, in seconds since the epoch.",
        False,
        (),
        _last_seen,
    ),
)

BY_NAME = {f.name: f for f in FAMILIES}


def rows(subject: Subject) -> Iterator[tuple[Family, tuple[str, ...], float]]:
    """Every (family, full label values, value) a sample gives."""
    base = subject.prom.values()
    for family in FAMILIES:
        for extra, value in family.values(subject):
            yield family, base + extra, value
