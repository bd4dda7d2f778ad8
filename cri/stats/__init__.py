"""Container and pod statistics (``runtime.stats``): one sample per container or pod, read from the
cgroup, network-namespace and writable-layer readers in metrics/, served by the CRI stats RPCs and the
Prometheus exporter alike."""

from cri.stats.model import ContainerSample, PodSample, PromLabels
from cri.stats.service import StatsService, register

__all__ = ["ContainerSample", "PodSample", "PromLabels", "StatsService", "register"]
