"""The gRPC server: RuntimeService and ImageService assembled from one adapter class per RPC family.

Each family lives in its own module (runtime_info, pods, containers, images, ...) as a class of RPC
methods that validate the request, call the domain layer through the typed attributes the class
declares (the subsystems of the Daemon, cri/build.py) and build the response. An RPC no family
defines falls through to the generated base class, which the interceptor turns into UNIMPLEMENTED
naming the method.
"""

from __future__ import annotations

from concurrent import futures

import grpc

from cri.api import api_pb2_grpc
from cri.build import Daemon
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
    def __init__(self, daemon: Daemon) -> None:
        self.config = daemon.config
        self.runtime = daemon.runtime
        self.events = daemon.events
        self.pods = daemon.pods
        self.statuses = daemon.statuses
        self.containers = daemon.containers
        self.stats = daemon.stats
        self.stream_urls = daemon.stream_urls


class ImageService(ImageRPCs, api_pb2_grpc.ImageServiceServicer):
    def __init__(self, daemon: Daemon) -> None:
        self.images = daemon.images
        self.containers = daemon.containers


def build_server(daemon: Daemon) -> grpc.Server:
    runtime = daemon.runtime
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=daemon.config.server.workers, thread_name_prefix="grpc"),
        interceptors=[Interceptor(lambda: runtime.ready)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=None,
    )
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeService(daemon), server)
    api_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(daemon), server)
    return server
