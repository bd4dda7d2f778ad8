"""Container RPCs: Create/Start/Stop/Remove, List/Stream/Status, UpdateContainerResources,
ReopenContainerLog and ExecSync. The logic is in cri/containers; this only converts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from calyx_base.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from cri.api import api_pb2 as pb
from cri.containers import execsync
from cri.containers import status as conv
from cri.containers.model import CREATING, PB_STATE, Container
from cri.pbcache import LastListing, PbCache, as_field1
from cri.runtime import Runtime

STREAM_BATCH = 500

# One prebuilt pb.Container per container (serialized as field 1 of a list response), rebuilt when its
# state changes (all else in it is fixed at creation); see cri/pbcache.py.
_ITEMS: PbCache[bytes] = PbCache()
_UNFILTERED = LastListing()


def _containers(runtime: Runtime) -> Any:
    manager = getattr(runtime, "containers", None)
    if manager is None:
        raise FailedPrecondition("this calyx has no containers subsystem")
    return manager


def _matches(c: Container, flt: pb.ContainerFilter) -> bool:
    if flt.id and not c.id.startswith(flt.id):
        return False
    if flt.pod_sandbox_id and not c.pod_id.startswith(flt.pod_sandbox_id):
        return False
    if flt.HasField("state") and PB_STATE[c.state] != flt.state.state:
        return False
    return all(c.labels.get(k) == v for k, v in flt.label_selector.items())


def _item(c: Container) -> bytes:
    return _ITEMS.get(c.id, c, c.state, lambda: as_field1(conv.to_container(c)))


def _select(runtime: Runtime, flt: pb.ContainerFilter) -> list[bytes]:
    every = _containers(runtime).list()
    if not flt.ByteSize():
        # Containers change state in place: the state is part of the key.
        return _UNFILTERED.get([(c, c.state) for c in every], lambda: _items(every, every))
    return _items([c for c in every if _matches(c, flt)], every)


def _items(chosen: list[Container], every: list[Container]) -> list[bytes]:
    """The listed items of ``chosen`` (all of ``every``, or those a filter kept), oldest first."""
    listed = sorted((c for c in chosen if c.state != CREATING), key=lambda c: c.created_at)
    selected = [_item(c) for c in listed]
    _ITEMS.prune(len(every), lambda: {c.id for c in every})
    return selected


class ContainerRPCs:
    runtime: Runtime

    def CreateContainer(
        self, request: pb.CreateContainerRequest, context: grpc.ServicerContext
    ) -> pb.CreateContainerResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        container_id = _containers(self.runtime).create(request.pod_sandbox_id, request.config)
        return pb.CreateContainerResponse(container_id=container_id)

    def StartContainer(
        self, request: pb.StartContainerRequest, context: grpc.ServicerContext
    ) -> pb.StartContainerResponse:
        _containers(self.runtime).start(request.container_id)
        return pb.StartContainerResponse()

    def StopContainer(
        self, request: pb.StopContainerRequest, context: grpc.ServicerContext
    ) -> pb.StopContainerResponse:
        if not request.container_id:
            raise InvalidArgument("container_id is required")
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        _containers(self.runtime).stop(request.container_id, float(request.timeout))
        return pb.StopContainerResponse()

    def RemoveContainer(
        self, request: pb.RemoveContainerRequest, context: grpc.ServicerContext
    ) -> pb.RemoveContainerResponse:
        _containers(self.runtime).remove(request.container_id)
        return pb.RemoveContainerResponse()

    def ListContainers(self, request: pb.ListContainersRequest, context: grpc.ServicerContext) -> bytes:
        """The encoded ListContainersResponse (cri/pbcache.py): the interceptor sends bytes as they are."""
        return b"".join(_select(self.runtime, request.filter))

    def StreamContainers(
        self, request: pb.StreamContainersRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        items = _select(self.runtime, request.filter)
        for start in range(0, len(items), STREAM_BATCH):
            yield b"".join(items[start : start + STREAM_BATCH])  # encoded StreamContainersResponse

    def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: grpc.ServicerContext
    ) -> pb.ContainerStatusResponse:
        c = _containers(self.runtime).get(request.container_id)
        info = conv.verbose_info(c) if request.verbose else {}
        return pb.ContainerStatusResponse(status=conv.to_status(c), info=info)

    def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: grpc.ServicerContext
    ) -> pb.UpdateContainerResourcesResponse:
        if request.HasField("linux"):
            _containers(self.runtime).update_resources(request.container_id, request.linux)
        else:
            _containers(self.runtime).get(request.container_id)
        return pb.UpdateContainerResourcesResponse()

    def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: grpc.ServicerContext
    ) -> pb.ReopenContainerLogResponse:
        _containers(self.runtime).reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    def ExecSync(self, request: pb.ExecSyncRequest, context: grpc.ServicerContext) -> pb.ExecSyncResponse:
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        cancel = execsync.Cancel()  # kubelet cancelled or its deadline passed: kill the process
        if not context.add_callback(cancel.fire):  # the call is over already: start nothing
            cancel.close()
            cid = request.container_id
            raise DeadlineExceeded(f"ExecSync in {cid}: the client is gone", cid)
        try:
            result = _containers(self.runtime).exec_sync(
                request.container_id, list(request.cmd), request.timeout, cancel
            )
        finally:
            cancel.close()
        return pb.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)
