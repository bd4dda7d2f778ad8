"""A small HTTP/1.1 server for the /metrics WSGI app whose cost does not grow with its clients.

Any local user can connect to the metrics port, and the daemon is root. prometheus-client's own server
starts a thread per connection and waits for a request line forever, so idle connections were threads
of the daemon without bound. Here one asyncio thread holds every connection, a request head must
arrive whole within ``HEAD_TIMEOUT`` (also the keep-alive wait between requests), a reply must be taken
within ``WRITE_TIMEOUT``, and the app (rendering a scrape is CPU work) runs on a pool of ``WORKERS``
threads. At ``MAX_CONNECTIONS``, a new connection pushes out the one that has waited longest without
sending a whole request head (a scraper sends its request at once, so idle connections cannot keep it
out); when every connection is busy, the new one is closed. Only GET and HEAD without a body are
served: that is what a scrape is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import h11

from calyx_base.loop_thread import LoopThread

log = logging.getLogger("cri.stats.http")

MAX_CONNECTIONS = 64
HEAD_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0
HEAD_LIMIT = 16 * 1024
WORKERS = 2
STOP_TIMEOUT = 10.0  # for the connections to end, then again for the thread

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BoundedHttpServer:
    def __init__(self, app: WsgiApp, address: str, port: int, name: str = "metrics") -> None:
        self.app = app
        self.address = address
        self.requested_port = port
        self.name = name
        self.port = 0
        self._loop = LoopThread(name)
        self._server: asyncio.Server | None = None
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix=f"{name}-render")
        self._connections: set[asyncio.Task[None]] = set()
        self._waiting: dict[asyncio.Task[None], asyncio.StreamWriter] = {}  # for a head, oldest first

    # --- lifecycle (caller's thread) ---------------------------------------------------------------------

    def start(self) -> None:
        """Listen (an OSError such as a busy port is raised here) and serve on a thread of its own."""
        self._loop.start(self._listen)

    def stop(self) -> None:
        if not self._loop.running:
            return
        self._loop.stop(self._shutdown, STOP_TIMEOUT)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.address, self.requested_port, limit=HEAD_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # --- connections (the loop's thread) ----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            if not self._waiting:
                writer.transport.abort()
                return
            oldest = next(iter(self._waiting))
            self._waiting.pop(oldest).transport.abort()
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except _Refused as exc:
            with contextlib.suppress(ConnectionError, TimeoutError):
                await self._reply(writer, f"{exc.status} {exc.reason}", [], exc.reason.encode(), False)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.LimitOverrunError:
            with contextlib.suppress(ConnectionError, TimeoutError):
                await self._reply(writer, "431 Request Header Fields Too Large", [], b"", False)
        except Exception:
            log.exception("metrics request failed")
        finally:
            self._connections.discard(task)
            self._waiting.pop(task, None)
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; whether the connection stays open for another."""
        task = asyncio.current_task()
        assert task is not None
        self._waiting[task] = writer
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return False  # the client closed between requests
        finally:
            self._waiting.pop(task, None)
        conn = h11.Connection(h11.SERVER)
        try:
            conn.receive_data(raw)
            event = conn.next_event()
        except h11.RemoteProtocolError:
            raise _Refused(400, "Bad Request") from None
        if not isinstance(event, h11.Request):
            raise _Refused(400, "Bad Request")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        if "content-length" in headers and headers["content-length"].strip() != "0":
            raise _Refused(400, "Bad Request")
        if "transfer-encoding" in headers:
            raise _Refused(400, "Bad Request")
        method = event.method.decode("ascii", "replace")
        if method not in ("GET", "HEAD"):
            raise _Refused(405, "Method Not Allowed")
        keep_alive = event.http_version == b"1.1" and "close" not in headers.get("connection", "").lower()
        environ = self._environ(event, headers)
        status, response_headers, body = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._call_app, environ
        )
        await self._reply(
            writer, status, response_headers, b"" if method == "HEAD" else body, keep_alive, length=len(body)
        )
        return keep_alive

    def _environ(self, event: h11.Request, headers: dict[str, str]) -> dict[str, Any]:
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": event.method.decode("ascii", "replace"),
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": self.address,
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": "HTTP/" + event.http_version.decode("ascii", "replace"),
            "wsgi.url_scheme": "http",
        }
        for name, value in headers.items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        return environ

    def _call_app(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer["status"], answer["headers"] = status, list(headers)
            return lambda data: None

        body = b"".join(self.app(environ, start_response))
        return answer["status"], answer["headers"], body

    async def _reply(
        self,
        writer: asyncio.StreamWriter,
        status: str,
        headers: list[tuple[str, str]],
        body: bytes,
        keep_alive: bool,
        length: int | None = None,
    ) -> None:
        lines = [f"HTTP/1.1 {status}"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in ("content-length", "connection")]
        lines.append(f"Content-Length: {len(body) if length is None else length}")
        lines.append("Connection: " + ("keep-alive" if keep_alive else "close"))
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
