"""Samples to CRI messages: ContainerStats, PodSandboxStats and PodSandboxMetrics.

A value this host did not give is left unset (UInt64Value absent) rather than sent as 0, so kubelet can
tell "no data" from "zero".
"""

from __future__ import annotations

from cri.api import api_pb2 as pb
from cri.stats.families import FAMILIES
from cri.stats.model import DEFAULT_INTERFACE, ContainerSample, PodSample
from metrics.readings import CgroupSample, InterfaceReading, NetworkSample, PsiLine


def _u64(value: int | float | None) -> pb.UInt64Value | None:
    if value is None:
        return None
    return pb.UInt64Value(value=max(int(value), 0))


def _psi_data(line: PsiLine | None) -> pb.PsiData | None:
    if line is None:
        return None
    return pb.PsiData(Total=line.total_ns, Avg10=line.avg10, Avg60=line.avg60, Avg300=line.avg300)


def psi_stats(cgroup: CgroupSample | None, resource: str) -> pb.PsiStats | None:
    reading = cgroup.psi.get(resource) if cgroup is not None else None
    if reading is None:
        return None
    return pb.PsiStats(Some=_psi_data(reading.some), Full=_psi_data(reading.full))


def cpu_usage(cgroup: CgroupSample | None, nano_cores: int | None) -> pb.CpuUsage | None:
    if cgroup is None or cgroup.cpu is None:
        return None
    return pb.CpuUsage(
        timestamp=cgroup.timestamp_ns,
        usage_core_nano_seconds=_u64(cgroup.cpu.usage_ns),
        usage_nano_cores=_u64(nano_cores),
        psi=psi_stats(cgroup, "cpu"),
    )


def io_usage(cgroup: CgroupSample | None) -> pb.IoUsage | None:
    """CRI's IoUsage carries pressure only."""
    psi = psi_stats(cgroup, "io")
    if cgroup is None or psi is None:
        return None
    return pb.IoUsage(timestamp=cgroup.timestamp_ns, psi=psi)


def memory_usage(cgroup: CgroupSample | None) -> pb.MemoryUsage | None:
    if cgroup is None or cgroup.memory is None:
        return None
    m = cgroup.memory
    return pb.MemoryUsage(
        timestamp=cgroup.timestamp_ns,
        working_set_bytes=_u64(m.working_set_bytes),
        available_bytes=_u64(m.available_bytes),
        usage_bytes=_u64(m.usage_bytes),
        rss_bytes=_u64(m.rss_bytes),
        page_faults=_u64(m.page_faults),
        major_page_faults=_u64(m.major_page_faults),
        psi=psi_stats(cgroup, "memory"),
    )


def swap_usage(cgroup: CgroupSample | None) -> pb.SwapUsage | None:
    if cgroup is None or cgroup.memory is None or cgroup.memory.swap_bytes is None:
        return None
    m = cgroup.memory
    available = None
    if m.swap_limit_bytes is not None:
        available = max(m.swap_limit_bytes - m.swap_bytes, 0) if m.swap_bytes is not None else None
    return pb.SwapUsage(
        timestamp=cgroup.timestamp_ns,
        swap_usage_bytes=_u64(m.swap_bytes),
        swap_available_bytes=_u64(available),
    )


def container_stats(s: ContainerSample) -> pb.ContainerStats:
    stats = pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=s.id,
            metadata=pb.ContainerMetadata(name=s.name, attempt=s.attempt),
            labels=s.labels,
            annotations=s.annotations,
        )
    )
    cpu = cpu_usage(s.cgroup, s.cpu_nano_cores)
    if cpu is not None:
        stats.cpu.CopyFrom(cpu)
    memory = memory_usage(s.cgroup)
    if memory is not None:
        stats.memory.CopyFrom(memory)
    swap = swap_usage(s.cgroup)
    if swap is not None:
        stats.swap.CopyFrom(swap)
    io = io_usage(s.cgroup)
    if io is not None:
        stats.io.CopyFrom(io)
    if s.fs is not None:
        stats.writable_layer.CopyFrom(
            pb.FilesystemUsage(
                timestamp=s.fs.timestamp_ns,
                fs_id=pb.FilesystemIdentifier(mountpoint=s.fs_mountpoint),
                used_bytes=_u64(s.fs.used_bytes),
                inodes_used=_u64(s.fs.inodes_used),
            )
        )
    return stats


def _interface(i: InterfaceReading) -> pb.NetworkInterfaceUsage:
    return pb.NetworkInterfaceUsage(
        name=i.name,
        rx_bytes=_u64(i.rx_bytes),
        rx_errors=_u64(i.rx_errors),
        tx_bytes=_u64(i.tx_bytes),
        tx_errors=_u64(i.tx_errors),
    )


def network_usage(net: NetworkSample) -> pb.NetworkUsage:
    """The pod's interfaces but loopback; eth0 (else the first) is the default interface."""
    own = [i for i in net.interfaces if i.name != "lo"]
    usage = pb.NetworkUsage(timestamp=net.timestamp_ns, interfaces=[_interface(i) for i in own])
    default = net.interface(DEFAULT_INTERFACE) or (own[0] if own else None)
    if default is not None:
        usage.default_interface.CopyFrom(_interface(default))
    return usage


def pod_stats(s: PodSample) -> pb.PodSandboxStats:
    linux = pb.LinuxPodSandboxStats(containers=[container_stats(c) for c in s.containers])
    cpu = cpu_usage(s.cgroup, s.cpu_nano_cores)
    if cpu is not None:
        linux.cpu.CopyFrom(cpu)
    memory = memory_usage(s.cgroup)
    if memory is not None:
        linux.memory.CopyFrom(memory)
    if s.network is not None:
        linux.network.CopyFrom(network_usage(s.network))
    io = io_usage(s.cgroup)
    if io is not None:
        linux.io.CopyFrom(io)
    if s.cgroup is not None and s.cgroup.processes is not None:
        linux.process.CopyFrom(
            pb.ProcessUsage(timestamp=s.cgroup.timestamp_ns, process_count=_u64(s.cgroup.processes))
        )
    return pb.PodSandboxStats(
        attributes=pb.PodSandboxAttributes(
            id=s.id,
            metadata=pb.PodSandboxMetadata(name=s.name, uid=s.uid, namespace=s.namespace, attempt=s.attempt),
            labels=s.labels,
            annotations=s.annotations,
        ),
        linux=linux,
    )


def metric_descriptors() -> list[pb.MetricDescriptor]:
    return [pb.MetricDescriptor(name=f.name, help=f.help, label_keys=list(f.label_names)) for f in FAMILIES]


def _metrics(subject: ContainerSample | PodSample) -> list[pb.Metric]:
    """CRI wants timestamp 0 for values gathered live and the collection time for cached ones."""
    out: list[pb.Metric] = []
    base = list(subject.prom.values())
    fs = subject.fs if isinstance(subject, ContainerSample) else None
    for family in FAMILIES:
        timestamp = fs.timestamp_ns if family.cached and fs is not None else 0
        for extra, value in family.values(subject):
            out.append(
                pb.Metric(
                    name=family.name,
                    timestamp=timestamp,
                    metric_type=pb.COUNTER if family.counter else pb.GAUGE,
                    label_values=base + list(extra),
                    value=pb.UInt64Value(value=max(int(value), 0)),
                )
            )
    return out


def pod_metrics(s: PodSample) -> pb.PodSandboxMetrics:
    """Pod-level series (its cgroup and network) and each container's."""
    return pb.PodSandboxMetrics(
        pod_sandbox_id=s.id,
        metrics=_metrics(s),
        container_metrics=[pb.ContainerMetrics(container_id=c.id, metrics=_metrics(c)) for c in s.containers],
    )
