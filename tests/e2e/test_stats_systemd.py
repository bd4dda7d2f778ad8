"""Stats under the systemd cgroup driver: a daemon inside the test systemd (tests/systemd_fixture.py), a
pod slice, a container scope with CPU and memory limits, read through the CRI stats and metrics RPCs."""

from __future__ import annotations

from pathlib import Path

from cri.api import api_pb2 as pb
from tests.image_fixtures import LoopbackRegistry
from tests.slice_pods import pod_in_a_slice
from tests.systemd_fixture import NamespacedSystemd
from tests.waiting import wait_for

MiB = 1024 * 1024


def test_container_in_a_systemd_scope_reports_usage_limits_and_throttling(
    namespaced_systemd: NamespacedSystemd,
    image_registry: LoopbackRegistry,
    short_tmp: Path,
) -> None:
    with pod_in_a_slice(namespaced_systemd, image_registry, short_tmp, qos="burstable") as slice_pod:
        rt = slice_pod.daemon.runtime
        pod, pod_id, path = slice_pod.config, slice_pod.id, slice_pod.path
        resources = pb.LinuxContainerResources(
            cpu_quota=20_000, cpu_period=100_000, memory_limit_in_bytes=80 * MiB
        )
        # kubelet's default: a PID namespace of its own (as test_cgroups.py does).
        cid = slice_pod.start_container(
            "throttled", ["sh", "-c", "while :; do :; done"], resources, pb.CONTAINER
        )

        def metrics() -> dict[str, pb.Metric]:
            (pod_metrics,) = rt.ListPodSandboxMetrics(
                pb.ListPodSandboxMetricsRequest(), timeout=30
            ).pod_metrics
            (container,) = pod_metrics.container_metrics
            assert container.container_id == cid
            return {m.name: m for m in container.metrics}

        # A spinning shell with a fifth of a CPU is throttled in most periods.
        found = wait_for(
            lambda: (m := metrics())["container_cpu_cfs_throttled_periods_total"].value.value > 0 and m,
            "throttled periods",
        )
        assert found["container_spec_cpu_quota"].value.value == 20_000
        assert found["container_spec_cpu_period"].value.value == 100_000
        assert found["container_spec_memory_limit_bytes"].value.value == 80 * MiB
        assert found["container_cpu_cfs_periods_total"].value.value >= (
            found["container_cpu_cfs_throttled_periods_total"].value.value
        )
        labels = list(found["container_memory_usage_bytes"].label_values)
        assert labels[:4] == ["throttled", pod.metadata.name, "calyx-test", f"{path}/calyx-{cid}.scope"]
        assert labels[5] == cid

        stats = rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=30).stats
        memory = stats.memory
        assert memory.available_bytes.value == 80 * MiB - memory.working_set_bytes.value
        assert stats.cpu.usage_core_nano_seconds.value > 0
        assert stats.cpu.HasField("psi")  # the scope's directory in the hybrid cgroup2 mount

        pod_stats = rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id), timeout=30).stats
        # The pod slice holds the container's scope: at least the container's CPU time (a counter, read
        # later) and its anonymous memory (a spinning shell's does not change; its usage_bytes, with
        # kernel memory, moved by 200 KB between the two reads in a loaded node).
        assert pod_stats.linux.cpu.usage_core_nano_seconds.value >= stats.cpu.usage_core_nano_seconds.value
        assert memory.rss_bytes.value > 0
        assert pod_stats.linux.memory.rss_bytes.value >= memory.rss_bytes.value
        assert pod_stats.linux.memory.usage_bytes.value >= memory.rss_bytes.value
        assert pod_stats.linux.process.process_count.value == 1
        assert not pod_stats.linux.HasField("network")  # a host-network pod has no interfaces of its own
        rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=120)
        exited = rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=30).stats
        assert exited.attributes.id == cid
        assert not exited.HasField("cpu") and not exited.HasField("memory")  # no cgroup left to read
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=120)
        slice_pod.remove()
