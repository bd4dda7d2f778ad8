"""CheckpointContainer: refused with a reason. Checkpointing a runc container needs CRIU (``runc
checkpoint``), which Calyx neither installs nor drives; kubelet's checkpoint API then reports this."""

from __future__ import annotations

import grpc

from calyx_base.errors import Unimplemented
from cri.api import api_pb2 as pb

REASON = (
    "CheckpointContainer is not supported by calyx: checkpointing needs CRIU (runc checkpoint), "
    "which calyx does not install or drive"
)


class CheckpointRPCs:
    def CheckpointContainer(
        self, request: pb.CheckpointContainerRequest, context: grpc.ServicerContext
    ) -> pb.CheckpointContainerResponse:
        raise Unimplemented(REASON, request.container_id or None)
