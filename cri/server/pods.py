"""Pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc

from cri import lifecycle
from cri.api import api_pb2 as pb
from cri.pbcache import LastListing, PbCache, as_field1
from cri.pods.model import Pod
from cri.pods.query import filtered, verbose_info
from cri.pods.status import pod_status, sandbox_state
from cri.runtime import Runtime

STREAM_BATCH = 256  # pods per StreamPodSandboxes message, well below the 16 MiB message limit

# One prebuilt pb.PodSandbox per pod record: a Pod is frozen and every change replaces it, so the record
# object itself is the version (see cri/pbcache.py).
_ITEMS: PbCache[bytes] = PbCache()
_UNFILTERED = LastListing()


def pod_sandbox(pod: Pod) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=pod.id,
        metadata=pod.metadata.to_pb(),
        state=sandbox_state(pod),
        created_at=pod.created_at,
        labels=pod.labels,
        annotations=pod.annotations,
        runtime_handler=pod.runtime_handler,
    )


def _item(pod: Pod) -> bytes:
    return _ITEMS.get(pod.id, pod, None, lambda: as_field1(pod_sandbox(pod)))


def _listed(pods: Any, flt: pb.PodSandboxFilter | None) -> list[bytes]:
    """Each pod as field 1 of a list response (see cri/pbcache.py). No filter and an empty one (crictl
    sends one) are the same listing."""
    every = pods.list()
    if flt is None or not flt.ByteSize():
        # A Pod is frozen: a change is a new object, so the objects are the key.
        return _UNFILTERED.get(every, lambda: _items(sorted(every, key=lambda p: p.created_at), every))
    return _items(filtered(pods, flt), every)


def _items(chosen: list[Pod], every: list[Pod]) -> list[bytes]:
    """The items of ``chosen`` (in order); entries of pods no longer in ``every`` are dropped."""
    _ITEMS.prune(len(every), lambda: {p.id for p in every})
    return [_item(p) for p in chosen]


class PodRPCs:
    runtime: Runtime

    @property
    def _pods(self) -> Any:
        return self.runtime.pods  # type: ignore[attr-defined]

    def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: grpc.ServicerContext) -> Any:
        pod = self._pods.run(request)
        return pb.RunPodSandboxResponse(pod_sandbox_id=pod.id)

    def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: grpc.ServicerContext) -> Any:
        self._pods.stop(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest, context: grpc.ServicerContext) -> Any:
        self._pods.remove(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest, context: grpc.ServicerContext) -> Any:
        pod = self._pods.get(request.pod_sandbox_id)
        # With a timestamp set, kubelet's evented PLEG takes the pod's container statuses from this
        # response instead of asking ContainerStatus: they must be here (built as for the events).
        response = pb.PodSandboxStatusResponse(
            status=pod_status(pod),
            timestamp=time.time_ns(),
            containers_statuses=lifecycle.container_statuses(self.runtime, pod.id),
        )
        if request.verbose:
            response.info.update(verbose_info(pod))
        return response

    def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: grpc.ServicerContext) -> Any:
        flt = request.filter if request.HasField("filter") else None
        return b"".join(_listed(self._pods, flt))  # encoded (cri/pbcache.py), sent as it is

    def UpdatePodSandboxResources(
        self, request: pb.UpdatePodSandboxResourcesRequest, context: grpc.ServicerContext
    ) -> Any:
        """kubelet has resized the pod cgroup; the pod records the new values (see cri/pods/resources.py)."""
        self._pods.update_resources(request)
        return pb.UpdatePodSandboxResourcesResponse()

    def StreamPodSandboxes(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """ListPodSandbox as a stream of batches (kubelet's variant for nodes with many pods)."""
        flt = request.filter if request.HasField("filter") else None
        items = _listed(self._pods, flt)
        for start in range(0, len(items), STREAM_BATCH):
            yield b"".join(items[start : start + STREAM_BATCH])
