"""Samples as the stats consumers see them: the readings plus who they are about.

A sample is taken once and then converted, by the CRI RPCs into ContainerStats/PodSandboxStats, by the
metric families into CRI Metrics or Prometheus series, so every value in one answer comes from the same
read of the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from metrics.readings import CgroupSample, FsUsage, NetworkSample

# The interface kubelet treats as the pod's own (CRI NetworkUsage.default_interface).
DEFAULT_INTERFACE = "eth0"


@dataclass(frozen=True)
class PromLabels:
    """cAdvisor's label set for a container_* series."""

    container: str  # the container's name in the pod ("" for the pod's own cgroup)
    pod: str
    namespace: str
    id: str  # the cgroup path, as cAdvisor names its containers
    image: str
    name: str  # the runtime's id of the container (or of the pod for pod-level series)

    NAMES = ("container", "pod", "namespace", "id", "image", "name")

    def values(self) -> tuple[str, str, str, str, str, str]:
        return (self.container, self.pod, self.namespace, self.id, self.image, self.name)


@dataclass(frozen=True)
class ContainerSample:
    id: str
    pod_id: str
    name: str
    attempt: int
    state: str
    labels: dict[str, str]
    annotations: dict[str, str]
    created_at_ns: int
    started_at_ns: int
    prom: PromLabels
    cgroup: CgroupSample | None = None  # None: not running (no cgroup to read)
    fs: FsUsage | None = None
    fs_mountpoint: str = ""
    cpu_nano_cores: int | None = None
    pid: int = 0  # its init process while its cgroup was read (0: not running), for the pod's netns


@dataclass(frozen=True)
class PodSample:
    id: str
    name: str
    uid: str
    namespace: str
    attempt: int
    state: str
    labels: dict[str, str]
    annotations: dict[str, str]
    created_at_ns: int
    prom: PromLabels
    cgroup: CgroupSample | None = None
    network: NetworkSample | None = None
    cpu_nano_cores: int | None = None
    containers: tuple[ContainerSample, ...] = field(default_factory=tuple)
