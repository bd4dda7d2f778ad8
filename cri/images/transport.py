"""HTTP for one pull, under the pull's one deadline, reading no more than it means to.

httpx's timeouts bound each socket operation, and a registry trickling a body (or its headers) a byte at
a time satisfies them forever. Here the network backend under httpx (httpcore's) clamps every connect,
TLS handshake, read and write to the time left before the pull's deadline, so neither the pull nor the
gRPC worker waiting on it outlives the deadline; host names are looked up within that time too
(cri/images/resolver.py), as getaddrinfo would wait minutes on a dead nameserver. Redirects are not
followed by the client (the registry client follows them itself, deciding where credentials go), bodies
are asked for and read as sent (no decompression, so no gzip bomb), and ``read`` takes a body only up to
a cap.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import ssl
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

from calyx_base.errors import DeadlineExceeded, Unavailable
from cri.images import resolver

REQUEST_TIMEOUT = 30.0  # one request's connect, each read and each write: a registry that stops answering
# httpcore's exceptions and httpx's own for them (httpx maps them the same way in its own transport).
_ERRORS: list[tuple[type[Exception], type[httpx.HTTPError]]] = [
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
]


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once: building it loads the CA bundle (~70 ms here),
    which every pull paid for each client, even over plain HTTP. SSLContext is safe to share."""
    return httpx.create_ssl_context()


def _left(deadline: float | None, timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before ``deadline``; ``error`` once nothing is left."""
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the pull's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: float | None) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        # One timeout bounds the whole handshake (CPython's SSL sockets keep one deadline for it).
        limit = _left(self._deadline, timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, limit), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int, limit: float | None) -> list[str]:
    try:
        return resolver.shared().resolve(host, port, limit)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"resolving {host}: no answer in time") from None
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from None


class _Backend(httpcore.NetworkBackend):
    def __init__(self, deadline: float | None) -> None:
        self._inner = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """``host`` resolved here, so that a resolver that never answers cannot outlast the time left
        (httpcore's own backend calls getaddrinfo unbounded), then its addresses tried in order within
        that same time. TLS still verifies ``host``: httpcore names it to start_tls itself."""
        limit = _left(self._deadline, timeout, httpcore.ConnectTimeout)
        end = None if limit is None else time.monotonic() + limit
        addresses = [host] if _is_ip(host) else _resolve(host, port, limit)
        failure: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            left = None if end is None else _left(end, None, httpcore.ConnectTimeout)
            try:
                stream = self._inner.connect_tcp(address, port, left, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _Stream(stream, self._deadline)
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("registries are reached over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core, mapped in _ERRORS:
            if isinstance(exc, core):
                raise mapped(str(exc)) from exc
        raise


class _Body(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes]) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors():
            yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            with _httpx_errors():
                close()


class DeadlineTransport(httpx.BaseTransport):
    """httpx's transport over an httpcore pool whose every socket operation ends by ``deadline``."""

    def __init__(self, deadline: float | None, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, max_connections=20, network_backend=_Backend(deadline)
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = self._pool.handle_request(core)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class Http:
    """One pull's HTTP client: every request and body under the pull's deadline, no redirect followed,
    no body decoded, and bodies read only up to a cap."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.client = httpx.Client(
            transport=DeadlineTransport(deadline, tls_context()),
            follow_redirects=False,
            headers={"user-agent": "calyx", "accept-encoding": "identity"},
        )

    def close(self) -> None:
        self.client.close()

    def _timeout(self, what: str) -> httpx.Timeout:
        limit = REQUEST_TIMEOUT
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{what}: the pull's deadline has passed")
            limit = min(limit, remaining)
        return httpx.Timeout(limit)

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """httpx's errors as Calyx's: DeadlineExceeded once the pull's deadline has passed (whatever
        broke the connection then), else Unavailable."""
        try:
            yield
        except httpx.HTTPError as exc:
            if self.deadline is not None and time.monotonic() >= self.deadline - 0.1:
                raise DeadlineExceeded(f"{what}: the pull's deadline has passed") from None
            if isinstance(exc, httpx.TimeoutException):
                raise Unavailable(f"{what}: timed out") from None
            raise Unavailable(f"{what}: {exc}") from None

    def send(
        self,
        method: str,
        url: str | httpx.URL,
        what: str,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
    ) -> httpx.Response:
        """The response with its body not read yet (the caller closes it)."""
        with self.errors(what):
            request = self.client.build_request(
                method, url, headers=headers, params=params, data=data, timeout=self._timeout(what)
            )
            return self.client.send(request, stream=True)

    def read(self, response: httpx.Response, cap: int, what: str) -> bytes | None:
        """The whole body if it is at most ``cap`` bytes, else None (and the connection is dropped
        without reading the rest)."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            response.close()
            return None
        body = bytearray()
        try:
            with self.errors(what):
                for piece in response.iter_raw():
                    body += piece
                    if len(body) > cap:
                        return None
        finally:
            response.close()
        return bytes(body)

    def head(self, response: httpx.Response, cap: int, what: str) -> bytes:
        """At most the first ``cap`` bytes of the body (of an error, for its message); the rest is
        dropped with the connection."""
        body = bytearray()
        try:
            with self.errors(what):
                for piece in response.iter_raw():
                    body += piece
                    if len(body) >= cap:
                        break
        finally:
            response.close()
        return bytes(body[:cap])

    def chunks(self, response: httpx.Response, size: int, what: str) -> Iterator[bytes]:
        """The body as it arrives, in pieces of ``size`` bytes (the caller verifies and closes)."""
        with self.errors(what):
            yield from response.iter_raw(size)
