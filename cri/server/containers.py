"""Container RPCs: Create/Start/Stop/Remove, List/Stream/Status, UpdateContainerResources,
ReopenContainerLog and ExecSync. The logic is in cri/containers; this only validates and converts."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from calyx_base.errors import DeadlineExceeded, InvalidArgument
from cri.api import api_pb2 as pb
from cri.containers import execsync
from cri.containers import status as conv
from cri.containers.subsystem import Containers

STREAM_BATCH = 500


class ContainerRPCs:
    containers: Containers

    def CreateContainer(
        self, request: pb.CreateContainerRequest, context: grpc.ServicerContext
    ) -> pb.CreateContainerResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        container_id = self.containers.lifecycle.create(request.pod_sandbox_id, request.config)
        return pb.CreateContainerResponse(container_id=container_id)

    def StartContainer(
        self, request: pb.StartContainerRequest, context: grpc.ServicerContext
    ) -> pb.StartContainerResponse:
        self.containers.lifecycle.start(request.container_id)
        return pb.StartContainerResponse()

    def StopContainer(
        self, request: pb.StopContainerRequest, context: grpc.ServicerContext
    ) -> pb.StopContainerResponse:
        if not request.container_id:
            raise InvalidArgument("container_id is required")
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        self.containers.lifecycle.stop(request.container_id, float(request.timeout))
        return pb.StopContainerResponse()

    def RemoveContainer(
        self, request: pb.RemoveContainerRequest, context: grpc.ServicerContext
    ) -> pb.RemoveContainerResponse:
        self.containers.lifecycle.remove(request.container_id)
        return pb.RemoveContainerResponse()

    def ListContainers(self, request: pb.ListContainersRequest, context: grpc.ServicerContext) -> bytes:
        """The encoded ListContainersResponse (cri/pbcache.py): the interceptor sends bytes as they are."""
        return b"".join(self.containers.listing.encoded(request.filter))

    def StreamContainers(
        self, request: pb.StreamContainersRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        items = self.containers.listing.encoded(request.filter)
        for start in range(0, len(items), STREAM_BATCH):
            yield b"".join(items[start : start + STREAM_BATCH])  # encoded StreamContainersResponse

    def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: grpc.ServicerContext
    ) -> pb.ContainerStatusResponse:
        c = self.containers.exits.get(request.container_id)
        info = conv.verbose_info(c) if request.verbose else {}
        return pb.ContainerStatusResponse(status=conv.to_status(c), info=info)

    def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: grpc.ServicerContext
    ) -> pb.UpdateContainerResourcesResponse:
        if request.HasField("linux"):
            self.containers.lifecycle.update_resources(request.container_id, request.linux)
        else:
            self.containers.exits.get(request.container_id)
        return pb.UpdateContainerResourcesResponse()

    def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: grpc.ServicerContext
    ) -> pb.ReopenContainerLogResponse:
        self.containers.lifecycle.reopen_log(request.container_id)
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
            result = self.containers.execs.exec_sync(
                request.container_id, list(request.cmd), request.timeout, cancel
            )
        finally:
            cancel.close()
        return pb.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)
