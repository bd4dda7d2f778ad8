"""Pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox,
StreamPodSandboxes, UpdatePodSandboxResources. The logic is in cri/pods; this only converts."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from cri.api import api_pb2 as pb
from cri.pods.service import PodService
from cri.status_events import StatusEvents

STREAM_BATCH = 256  # pods per StreamPodSandboxes message, well below the 16 MiB message limit


class PodRPCs:
    pods: PodService
    statuses: StatusEvents

    def RunPodSandbox(
        self, request: pb.RunPodSandboxRequest, context: grpc.ServicerContext
    ) -> pb.RunPodSandboxResponse:
        pod = self.pods.run(request)
        return pb.RunPodSandboxResponse(pod_sandbox_id=pod.id)

    def StopPodSandbox(
        self, request: pb.StopPodSandboxRequest, context: grpc.ServicerContext
    ) -> pb.StopPodSandboxResponse:
        self.pods.stop(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: grpc.ServicerContext
    ) -> pb.RemovePodSandboxResponse:
        self.pods.remove(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: grpc.ServicerContext
    ) -> pb.PodSandboxStatusResponse:
        found = self.statuses.sandbox_status(request.pod_sandbox_id, request.verbose)
        return pb.PodSandboxStatusResponse(
            status=found.status,
            timestamp=found.timestamp,
            containers_statuses=found.containers,
            info=found.info,
        )

    def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: grpc.ServicerContext) -> bytes:
        """The encoded ListPodSandboxResponse (cri/pbcache.py): the interceptor sends bytes as they are."""
        flt = request.filter if request.HasField("filter") else None
        return b"".join(self.pods.listing.encoded(flt))

    def UpdatePodSandboxResources(
        self, request: pb.UpdatePodSandboxResourcesRequest, context: grpc.ServicerContext
    ) -> pb.UpdatePodSandboxResourcesResponse:
        """kubelet has resized the pod cgroup; the pod records the new values (see cri/pods/resources.py)."""
        self.pods.update_resources(request)
        return pb.UpdatePodSandboxResourcesResponse()

    def StreamPodSandboxes(
        self, request: pb.StreamPodSandboxesRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """ListPodSandbox as a stream of batches (kubelet's variant for nodes with many pods)."""
        flt = request.filter if request.HasField("filter") else None
        items = self.pods.listing.encoded(flt)
        for start in range(0, len(items), STREAM_BATCH):
            yield b"".join(items[start : start + STREAM_BATCH])
