"""The gRPC server: RuntimeService and ImageService assembled from one adapter class per RPC family.

Each family lives in its own module (runtime_info, pods, containers, images, ...) as a class of RPC
methods that validate the request, call the domain layer through ``self.runtime`` and build the
response. An RPC no family defines falls through to the generated base class, which the interceptor
turns into UNIMPLEMENTED naming the method.
"""

from __future__ import annotations

from concurrent import futures

import grpc

from cri.api import api_pb2_grpc
from cri.runtime import Runtime
from cri.server.checkpoint import CheckpointRPCs
from cri.server.containers import ContainerRPCs
from cri.server.events import EventRPCs
from cri.server.images import ImageRPCs
from cri.server.interceptor import Interceptor
from cri.server.pods import PodRPCs
from cri.server.runtime_info import RuntimeInfoRPCs
from cri.server.stats import StatsRPCs
from cri.server.streaming import StreamingRPCs

# kubelet's own limit for CRI messages is 16 MiB; allow the same both ways.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class RuntimeService(
    RuntimeInfoRPCs,
    EventRPCs,
    PodRPCs,
    ContainerRPCs,
    StatsRPCs,
    StreamingRPCs,
    CheckpointRPCs,
    api_pb2_grpc.RuntimeServiceServicer,
):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


class ImageService(ImageRPCs, api_pb2_grpc.ImageServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def build_server(runtime: Runtime) -> grpc.Server:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=runtime.config.server.workers, thread_name_prefix="grpc"),
        interceptors=[Interceptor(lambda: runtime.ready)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=None,
    )
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeService(runtime), server)
    api_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(runtime), server)
    return server
