"""The streaming HTTP server: ``/exec/<token>``, ``/attach/<token>``, ``/portforward/<token>``.

Concurrency: one asyncio event loop in a thread of its own serves every connection. Sessions are
I/O-bound and long (an interactive shell can last hours), so one coroutine per session scales to many
sessions without holding any of the gRPC server's worker threads. The gRPC threads only insert tokens
(a locked dict); everything else happens on the loop, except the calls into the daemon (the
``Backend``): those can block for as long as runc or a container's lock makes them, which on the loop
would stall every other client, so they run on ``BACKEND_THREADS`` threads of the server's own
(``calyx_base.offload``; see ``BACKEND_THREADS`` for why not ``asyncio.to_thread``).

Each connection: read the request head (h11 parses it), consume the token (a wrong, used or expired
token is a 404 and nothing runs), then upgrade: ``Upgrade: SPDY/3.1`` with ``X-Stream-Protocol-Version``
negotiation, or a WebSocket with a channel subprotocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import urllib.parse
from typing import Any

import h11

from calyx_base.errors import CalyxError, NotFound
from calyx_base.loop_thread import LoopThread
from calyx_base.offload import Offload
from cri.config import StreamingConfig
from cri.streaming import command, instruments
from cri.streaming import remotecommand as rc
from cri.streaming.command import (
    SPDY_REMOTECOMMAND,
    V1,
    V4,
    WS_CHANNELS,
    WS_REMOTECOMMAND,
    CommandSession,
    SpdyCommandSession,
    WsCommandSession,
)
from cri.streaming.httphead import Connection, Head, HTTPError
from cri.streaming.netns import connect_localhost
from cri.streaming.portforward import MAX_FORWARDED_PORTS, SpdyPortForward, websocket_portforward
from cri.streaming.process import ExecProcess
from cri.streaming.session_requests import AttachRequest, Backend, ExecRequest, PortForwardRequest
from cri.streaming.spdy_session import SpdySession
from cri.streaming.tokens import TokenCache
from cri.streaming.ws_session import HandshakeRejected, WsSession

log = logging.getLogger("cri.streaming")

HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT = 10.0  # for the whole request head (and a TLS handshake): a client trickling it is dropped
MAX_HANDSHAKES = 512  # connections whose request head is still being read; more are closed at once
STOP_TIMEOUT = 30.0  # for the sessions to end, then again for the thread
# Backend calls (runc exec's fork, container records, container locks) in flight at once; more wait their
# turn, each within its session's slot of max_sessions. A pool of the server's own rather than the loop's
# default executor (asyncio.to_thread): its bound does not follow the host's CPU count, port-forward's
# netns sockets (which use the default one) never queue behind calls stuck on a lock, its threads never
# keep the daemon from exiting, and a call whose session has gone gets its result discarded (an exec
# process killed and reaped) instead of dropped.
BACKEND_THREADS = 8

SPDY_PORTFORWARD = ["portforward.k8s.io"]
WS_PORTFORWARD = [V4, "v4.base64.channel.k8s.io"]


class StreamingServer:
    def __init__(self, config: StreamingConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.tokens = TokenCache(config.token_ttl_seconds)
        self._loop = LoopThread("streaming")
        self._backend_calls = Offload("streaming-backend", BACKEND_THREADS)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._handshaking = 0
        self._active = 0  # upgraded sessions, at most config.max_sessions
        self.port = 0
        self.base_url = ""

    # --- lifecycle (runs in the caller's thread) -------------------------------------------------------

    def start(self) -> None:
        if self._loop.running:
            return
        self._loop.start(self._listen)
        log.info("streaming server listening", extra={"url": self.base_url})

    async def _listen(self) -> None:
        context = None
        if self.config.tls_cert and self.config.tls_key:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        self._server = await asyncio.start_server(
            self._accept,
            self.config.address,
            self.config.port,
            ssl=context,
            limit=HEAD_LIMIT,
            ssl_handshake_timeout=HEAD_TIMEOUT if context else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        host = self.config.address
        if ":" in host:
            host = f"[{host}]"
        self.base_url = f"{'https' if context else 'http'}://{host}:{self.port}"

    def close(self) -> None:
        """Stop listening and end every session (their processes are killed)."""
        self._loop.stop(self._shutdown, STOP_TIMEOUT)
        self._backend_calls.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    # Subsystem protocol: the server starts while the runtime recovers, so URLs work once ready.
    # (The orphans are reaped in the caller's thread, before the loop serves anyone.)
    def recover(self) -> None:
        try:
            self.backend.reap_orphans()
        except Exception:  # leftovers must not keep the daemon from serving
            log.exception("cannot clean up exec processes of a previous run")
        self.start()

    # --- URLs (called from gRPC threads) ----------------------------------------------------------------

    def url_for(self, kind: str, request: Any) -> str:
        token = self.tokens.insert(kind, request)
        return f"{self.base_url}/{kind}/{token}"

    # --- connections -----------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._handshaking >= MAX_HANDSHAKES:
            instruments.REJECTED.labels("busy").inc()
            writer.transport.abort()
            return
        self._sessions.add(task)
        try:
            await self._serve(reader, writer)
        except HTTPError as exc:
            await self._respond(writer, exc)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._sessions.discard(task)
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, exc: HTTPError) -> None:
        body = (exc.body + "\n").encode()
        lines = [
            f"HTTP/1.1 {exc.status} {exc.reason}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        lines += [f"{k}: {v}" for k, v in exc.headers]
        with contextlib.suppress(ConnectionError):
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await writer.drain()

    async def _read_head(self, reader: asyncio.StreamReader) -> Head:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            raise HTTPError(431, "Request Header Fields Too Large", "request head too large") from None
        conn = h11.Connection(h11.SERVER)
        try:
            conn.receive_data(raw)
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HTTPError(400, "Bad Request", f"malformed request: {exc}") from None
        if not isinstance(event, h11.Request):
            raise HTTPError(400, "Bad Request", "malformed request")
        target = urllib.parse.urlsplit(event.target.decode("latin-1"))
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers]
        return Head(event.method.decode(), target.path, urllib.parse.parse_qs(target.query), headers, raw)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handshaking += 1
        try:
            head = await self._read_head(reader)
        finally:
            self._handshaking -= 1
        parts = head.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ("exec", "attach", "portforward"):
            raise HTTPError(404, "Not Found", "404 page not found")
        if head.method not in ("GET", "POST"):
            raise HTTPError(405, "Method Not Allowed", "method not allowed")
        if self._active >= self.config.max_sessions:
            # Before the token is consumed: the client may try its URL again.
            instruments.REJECTED.labels("busy").inc()
            log.warning(
                "streaming request refused: too many sessions", extra={"max": self.config.max_sessions}
            )
            raise HTTPError(503, "Service Unavailable", "too many streaming sessions", [("Retry-After", "1")])
        kind, token = parts
        request = self.tokens.consume(kind, token)
        if request is None:
            log.info("streaming request with an unknown, used or expired token", extra={"kind": kind})
            instruments.REJECTED.labels("token").inc()
            raise HTTPError(404, "Not Found", "404 page not found")
        upgrade = head.upgrade()
        if upgrade not in ("websocket", "spdy/3.1"):
            instruments.REJECTED.labels("no_upgrade").inc()
            raise HTTPError(400, "Bad Request", "unable to upgrade: missing upgrade headers in request")
        target = getattr(request, "container_id", None) or getattr(request, "pod_id", "")
        ids = {"container_id": target} if kind != "portforward" else {"pod_id": target}
        log.info("streaming session started", extra={"kind": kind, "protocol": upgrade, **ids})
        started = asyncio.get_running_loop().time()
        instruments.SESSIONS.labels(kind, upgrade).inc()
        active = instruments.SESSIONS_ACTIVE.labels(kind, upgrade)
        active.inc()
        self._active += 1
        conn = Connection(reader, writer, head)
        try:
            if kind == "portforward":
                if upgrade == "websocket":
                    await self._ws_portforward(conn, request)
                else:
                    await self._spdy_portforward(conn, request)
                return
            runner = self._runner(kind, request)
            session = await self._command_session(upgrade, conn, request)
            if session is not None:
                await command.serve(session, runner)
        finally:
            self._active -= 1
            active.dec()
            duration_ms = (asyncio.get_running_loop().time() - started) * 1000
            log.info("streaming session ended", extra={"kind": kind, **ids, "duration_ms": duration_ms})

    def _runner(self, kind: str, request: Any) -> rc.Runner:
        if kind == "exec":
            return lambda ch: rc.run_exec(lambda size: self._exec_process(request, size), request.cmd, ch)

        async def attach(ch: rc.Channels) -> rc.Status:
            try:
                target = await self._backend_calls.run(lambda: self.backend.attach_target(request))
            except Exception as exc:
                return rc.status_error(f"cannot attach to the container: {exc}")
            return await rc.run_attach(target, ch)

        return attach

    async def _exec_process(self, request: ExecRequest, size: tuple[int, int] | None) -> ExecProcess:
        """The exec's process, started off the loop; a process whose session has gone meanwhile is
        killed, reaped and closed on the worker thread."""
        return await self._backend_calls.run(
            lambda: self.backend.exec_process(request, size), discard=lambda process: process.discard()
        )

    async def _command_session(
        self, upgrade: str, conn: Connection, request: ExecRequest | AttachRequest
    ) -> CommandSession | None:
        """Upgrade the connection for an exec or attach; None when a WebSocket handshake was refused."""
        if upgrade == "websocket":
            ws = await self._ws_accept(conn, WS_REMOTECOMMAND, WS_CHANNELS)
            return None if ws is None else WsCommandSession(ws, request)
        protocol = await self._spdy_upgrade(conn, SPDY_REMOTECOMMAND) or V1
        return SpdyCommandSession(
            conn.reader,
            conn.writer,
            protocol,
            request,
            self.config.idle_timeout_seconds,
            self.config.stream_creation_timeout_seconds,
        )

    # --- SPDY ------------------------------------------------------------------------------------------

    async def _spdy_upgrade(self, conn: Connection, supported: list[str]) -> str:
        """Negotiate the stream protocol (the client's first one we support) and answer 101."""
        offered = conn.head.values("x-stream-protocol-version")
        chosen = next((p for p in offered if p in supported), None)
        if offered and chosen is None:
            raise HTTPError(
                403,
                "Forbidden",
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                f"server accepts {supported}",
                [("X-Accepted-Stream-Protocol-Versions", p) for p in supported],
            )
        lines = ["HTTP/1.1 101 Switching Protocols", "Connection: Upgrade", "Upgrade: SPDY/3.1"]
        if chosen:
            lines.append(f"X-Stream-Protocol-Version: {chosen}")
        conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await conn.writer.drain()
        return chosen or ""

    async def _spdy_portforward(self, conn: Connection, request: PortForwardRequest) -> None:
        netns = await self._pod_netns(request.pod_id)
        await self._spdy_upgrade(conn, SPDY_PORTFORWARD)
        forwarder = SpdyPortForward(
            request.pod_id,
            lambda port: connect_localhost(netns, port),
            self.config.stream_creation_timeout_seconds,
        )
        session = SpdySession(conn.reader, conn.writer, forwarder.on_stream, self.config.idle_timeout_seconds)
        forwarder.session = session
        try:
            await session.run()
        finally:
            await forwarder.close()
            conn.writer.close()

    async def _pod_netns(self, pod_id: str) -> str | None:
        """Checked before the upgrade, so a pod removed since the URL was issued is a plain HTTP error."""
        try:
            return await self._backend_calls.run(lambda: self.backend.pod_netns(pod_id))
        except NotFound as exc:
            raise HTTPError(404, "Not Found", str(exc)) from None
        except CalyxError as exc:
            raise HTTPError(500, "Internal Server Error", str(exc)) from None

    # --- WebSocket -------------------------------------------------------------------------------------

    async def _ws_accept(self, conn: Connection, supported: list[str], channels: int) -> WsSession | None:
        """The WebSocket opening handshake; None (logged) when it was refused."""
        try:
            return await WsSession.accept(
                conn.reader, conn.writer, conn.head.raw, supported, channels, self.config.idle_timeout_seconds
            )
        except HandshakeRejected as exc:
            log.info("websocket handshake rejected", extra={"reason": str(exc)})
            return None

    async def _ws_portforward(self, conn: Connection, request: PortForwardRequest) -> None:
        ports = list(request.ports)
        if not ports:
            try:
                ports = [int(p) for v in conn.head.query.get("port", []) for p in v.split(",")]
            except ValueError:
                raise HTTPError(400, "Bad Request", "query parameter port must be a number") from None
        if not ports or not all(0 < p < 65536 for p in ports):
            raise HTTPError(400, "Bad Request", "at least one port between 1 and 65535 is required")
        if len(ports) > MAX_FORWARDED_PORTS:
            raise HTTPError(400, "Bad Request", f"at most {MAX_FORWARDED_PORTS} ports can be forwarded")
        netns = await self._pod_netns(request.pod_id)
        session = await self._ws_accept(conn, WS_PORTFORWARD, 2 * len(ports))
        if session is None:
            return
        async with command.running(session) as loop_task:
            work = asyncio.create_task(
                websocket_portforward(
                    session, request.pod_id, ports, lambda port: connect_localhost(netns, port)
                )
            )
            try:
                await asyncio.wait([work, loop_task], return_when=asyncio.FIRST_COMPLETED)
            finally:
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
