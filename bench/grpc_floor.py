"""The gRPC floor: a bare grpcio server that answers a CRI method with bytes recorded from Calyx.

It is Calyx's serving stack (grpcio's sync server on a unix socket, a thread pool, the same message
limits) with no work at all behind it: no lookup, no filtering, no interceptor, the reply already
encoded. Timing the same client against it beside Calyx and containerd shows how much of a List call
is the Python gRPC server's own per-call cost, which no change inside Calyx can remove.

Run as ``python -m bench.grpc_floor SOCKET`` (a process of its own, so that it does not share the
benchmark client's interpreter lock). ``/calyx.bench.Floor/Store`` takes ``method NUL reply`` and from
then on ``method`` answers ``reply``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from bench.client import Client
from cri.config import ServerConfig
from cri.server.service import MAX_MESSAGE_BYTES

STORE = "/calyx.bench.Floor/Store"


def _identity(data: bytes) -> bytes:
    return data


class _Replies(grpc.GenericRpcHandler):
    """Answers every stored method with its stored reply; ``STORE`` records one."""

    def __init__(self) -> None:
        self._replies: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method == STORE:
            return grpc.unary_unary_rpc_method_handler(self._store, _identity, _identity)
        reply = self._replies.get(method)
        if reply is None:
            return None
        return grpc.unary_unary_rpc_method_handler(lambda _request, _context: reply, _identity, _identity)

    def _store(self, request: bytes, _context: grpc.ServicerContext) -> bytes:
        method, _, reply = request.partition(b"\0")
        with self._lock:
            self._replies[method.decode()] = reply
        return b""


def serve(socket_path: str) -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=ServerConfig().workers),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    server.add_generic_rpc_handlers([_Replies()])
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    server.wait_for_termination()


class GrpcFloor:
    """The floor server as a child process; ``store`` a reply, then call it like the runtime."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        repo = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.grpc_floor", str(socket_path)], cwd=repo)
        self.client = Client(f"unix://{socket_path}")  # the benchmark's own client, as on the runtimes
        try:
            grpc.channel_ready_future(self.client.channel).result(timeout=30)
        except grpc.FutureTimeoutError:
            self.close()
            raise RuntimeError(f"the gRPC floor server did not listen on {socket_path} within 30 s") from None
        self._store = self.client.channel.unary_unary(
            STORE, request_serializer=_identity, response_deserializer=_identity
        )

    def store(self, method: str, reply: bytes) -> None:
        self._store(method.encode() + b"\0" + reply, timeout=30)

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.socket_path.unlink(missing_ok=True)


def raw_reply(channel: grpc.Channel, method: str, request: Any) -> bytes:
    """``method``'s reply to ``request`` from the runtime behind ``channel``, still encoded."""
    call = channel.unary_unary(method, request_serializer=type(request).SerializeToString)
    reply: bytes = call(request, timeout=120)  # no deserializer: the bytes as they came
    return reply


if __name__ == "__main__":
    serve(sys.argv[1])
