"""GetContainerEvents: a server stream of the runtime's container and pod events."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from cri.api import api_pb2 as pb
from cri.events import EventBus


class EventRPCs:
    events: EventBus

    def GetContainerEvents(
        self, request: pb.GetEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ContainerEventResponse]:
        yield from self.events.stream(context.is_active)
