"""Stats RPCs: ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats, their Stream*
variants, ListMetricDescriptors, ListPodSandboxMetrics and StreamPodSandboxMetrics.

Thin: filters are read from the request, samples come from the StatsService, messages from
cri/stats/convert.py. The Stream* RPCs return the same lists in batches (kubelet's variant for nodes
whose lists would exceed a message).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from calyx_base.errors import InvalidArgument
from cri.api import api_pb2 as pb
from cri.pods.model import READY
from cri.stats import convert
from cri.stats.service import StatsService

STREAM_BATCH = 50


class StatsRPCs:
    stats: StatsService

    # --- containers -----------------------------------------------------------------------------------

    def ContainerStats(
        self, request: pb.ContainerStatsRequest, context: grpc.ServicerContext
    ) -> pb.ContainerStatsResponse:
        if not request.container_id:
            raise InvalidArgument("ContainerStats: container_id is required")
        sample = self.stats.container(request.container_id)
        return pb.ContainerStatsResponse(stats=convert.container_stats(sample))

    def _container_stats(
        self, request: pb.ListContainerStatsRequest | pb.StreamContainerStatsRequest
    ) -> list[pb.ContainerStats]:
        flt = request.filter
        samples = self.stats.containers(
            id=flt.id, pod_id=flt.pod_sandbox_id, labels=dict(flt.label_selector)
        )
        return [convert.container_stats(s) for s in samples]

    def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: grpc.ServicerContext
    ) -> pb.ListContainerStatsResponse:
        return pb.ListContainerStatsResponse(stats=self._container_stats(request))

    def StreamContainerStats(
        self, request: pb.StreamContainerStatsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamContainerStatsResponse]:
        stats = self._container_stats(request)
        for start in range(0, len(stats), STREAM_BATCH):
            yield pb.StreamContainerStatsResponse(container_stats=stats[start : start + STREAM_BATCH])

    # --- pods -----------------------------------------------------------------------------------------

    def PodSandboxStats(
        self, request: pb.PodSandboxStatsRequest, context: grpc.ServicerContext
    ) -> pb.PodSandboxStatsResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("PodSandboxStats: pod_sandbox_id is required")
        sample = self.stats.pod(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=convert.pod_stats(sample))

    def _pod_stats(
        self, request: pb.ListPodSandboxStatsRequest | pb.StreamPodSandboxStatsRequest
    ) -> list[pb.PodSandboxStats]:
        flt = request.filter
        samples = self.stats.pods(id=flt.id, labels=dict(flt.label_selector))
        return [convert.pod_stats(s) for s in samples]

    def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: grpc.ServicerContext
    ) -> pb.ListPodSandboxStatsResponse:
        return pb.ListPodSandboxStatsResponse(stats=self._pod_stats(request))

    def StreamPodSandboxStats(
        self, request: pb.StreamPodSandboxStatsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamPodSandboxStatsResponse]:
        stats = self._pod_stats(request)
        for start in range(0, len(stats), STREAM_BATCH):
            yield pb.StreamPodSandboxStatsResponse(pod_sandbox_stats=stats[start : start + STREAM_BATCH])

    # --- metrics --------------------------------------------------------------------------------------

    def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: grpc.ServicerContext
    ) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(descriptors=convert.metric_descriptors())

    def _pod_metrics(self) -> list[pb.PodSandboxMetrics]:
        return [convert.pod_metrics(s) for s in self.stats.pods() if s.state == READY]

    def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: grpc.ServicerContext
    ) -> pb.ListPodSandboxMetricsResponse:
        return pb.ListPodSandboxMetricsResponse(pod_metrics=self._pod_metrics())

    def StreamPodSandboxMetrics(
        self, request: pb.StreamPodSandboxMetricsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamPodSandboxMetricsResponse]:
        metrics = self._pod_metrics()
        for start in range(0, len(metrics), STREAM_BATCH):
            yield pb.StreamPodSandboxMetricsResponse(
                pod_sandbox_metrics=metrics[start : start + STREAM_BATCH]
            )
