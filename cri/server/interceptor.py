"""One place for what every RPC needs: readiness gate, logging with ids and duration, metrics, and the
answer to a domain error (calyx_base.errors, as status_codes.py maps it). Servicers never build gRPC errors
themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from calyx_base.errors import CalyxError, Unavailable
from cri.server.status_codes import status_of

log = logging.getLogger("cri.server")

REQUESTS = Counter(
    "calyx_grpc_requests_total", "CRI calls served, by method and status code.", ["method", "code"]
)
LATENCY = Histogram(
    "calyx_grpc_request_duration_seconds",
    "Time to serve a CRI call (for streaming calls: until the stream ends).",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

# Calls that kubelet makes every few seconds: logged at debug level only.
QUIET = {
    "Version",
    "Status",
    "RuntimeConfig",
    "ListPodSandbox",
    "ListContainers",
    "ListImages",
    "ImageStatus",
    "PodSandboxStatus",
    "ContainerStatus",
    "ImageFsInfo",
    "ListContainerStats",
    "ListPodSandboxStats",
    "ContainerStats",
    "PodSandboxStats",
    "ListPodSandboxMetrics",
    "ListMetricDescriptors",
    "StreamContainerStats",
    "StreamPodSandboxStats",
    "StreamPodSandboxMetrics",
}
# Calls answered before recovery has finished; everything else waits for readiness.
ALWAYS_ALLOWED = {"Version", "Status", "RuntimeConfig"}
ID_FIELDS = ("pod_sandbox_id", "container_id")


def request_ids(request: Any) -> dict[str, str]:
    """The object ids a request is about, for the log line."""
    ids: dict[str, str] = {}
    for name in ID_FIELDS:
        value: object = getattr(request, name, "")
        if isinstance(value, str) and value:
            ids[name] = value
    image: Any = getattr(request, "image", None)
    if image is not None and isinstance(getattr(image, "image", None), str) and image.image:
        ids["image"] = image.image
    config: Any = getattr(request, "config", None)
    metadata: Any = getattr(config, "metadata", None)
    if metadata is not None and isinstance(getattr(metadata, "name", None), str) and metadata.name:
        ids["object_name"] = metadata.name  # "name" is a reserved LogRecord attribute
    return ids


def _bytes_pass(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The method's serializer, except that a response a servicer serialized itself (bytes) goes out
    as it is: the list RPCs join cached, already encoded items (cri/pbcache.py)."""
    if serializer is None:
        return None

    def serialize(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serializer(response)

    return serialize


class Interceptor(grpc.ServerInterceptor):
    """Wraps each method's handler once (the wrapped handlers and the metric series of each method and
    status are kept: building them on every call cost as much as a small List itself)."""

    def __init__(self, is_ready: Callable[[], bool]) -> None:
        self._is_ready = is_ready
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._series: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        full = handler_call_details.method  # "/runtime.v1.RuntimeService/Version"
        wrapped = self._handlers.get(full)
        if wrapped is None:
            handler = continuation(handler_call_details)
            if handler is None:  # an unknown method: not kept, so any name a client makes up costs nothing
                return None
            wrapped = self._handlers.setdefault(full, self._wrap(full.rsplit("/", 1)[-1], handler))
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=_bytes_pass(handler.response_serializer),
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=_bytes_pass(handler.response_serializer),
            )
        return handler

    def _gate(self, method: str) -> None:
        if method not in ALWAYS_ALLOWED and not self._is_ready():
            raise Unavailable(f"{method}: calyx is still recovering its state, try again shortly")

    def _wrap_unary(
        self, method: str, behavior: Callable[[Any, grpc.ServicerContext], Any]
    ) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.monotonic()
            code = grpc.StatusCode.OK
            detail = ""
            try:
                self._gate(method)
                return behavior(request, context)
            except Exception as exc:
                code, detail = self._status(method, exc, request)
                context.abort(code, detail)
            finally:
                self._record(method, request, code, detail, start)

        return call

    def _wrap_stream(
        self, method: str, behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]]
    ) -> Callable[..., Iterator[Any]]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.monotonic()
            code = grpc.StatusCode.OK
            detail = ""
            try:
                self._gate(method)
                yield from behavior(request, context)
            except Exception as exc:
                code, detail = self._status(method, exc, request)
                context.abort(code, detail)
            finally:
                self._record(method, request, code, detail, start)

        return call

    @staticmethod
    def _status(method: str, exc: Exception, request: Any) -> tuple[grpc.StatusCode, str]:
        if isinstance(exc, CalyxError):
            return status_of(exc), str(exc)
        if isinstance(exc, NotImplementedError):
            return grpc.StatusCode.UNIMPLEMENTED, f"calyx does not implement {method} yet"
        log.error("unexpected error", exc_info=exc, extra={"method": method, **request_ids(request)})
        return grpc.StatusCode.INTERNAL, f"{method}: internal error: {exc!r}"

    def _record(self, method: str, request: Any, code: grpc.StatusCode, detail: str, start: float) -> None:
        elapsed = time.monotonic() - start
        series = self._series.get((method, code))
        if series is None:
            series = self._series.setdefault(
                (method, code), (REQUESTS.labels(method, code.name), LATENCY.labels(method))
            )
        requests, latency = series
        requests.inc()
        latency.observe(elapsed)
        level = logging.DEBUG if method in QUIET and code == grpc.StatusCode.OK else logging.INFO
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
            level = logging.WARNING
        if log.isEnabledFor(level):
            extra: dict[str, Any] = {"method": method, **request_ids(request), "code": code.name}
            extra["duration_ms"] = elapsed * 1000
            if detail:
                extra["error"] = detail
            log.log(level, "rpc", extra=extra)
