"""Port-forward: each forwarded connection is a TCP connection to 127.0.0.1:<port> in the pod's netns.

Over SPDY (``portforward.k8s.io``) the client opens an error stream and a data stream per connection,
paired by their ``requestID`` header (old clients without it: by stream id, as kubelet guesses). Over
WebSocket (``v4.channel.k8s.io`` style) the ports are fixed by the request: channel 2i carries port i's
data and 2i+1 its errors, and the first message on each is the port as a little-endian uint16.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cri.streaming import spdy
from cri.streaming.remotecommand import Sink, Source
from cri.streaming.spdy_session import SpdySession, SpdyStream
from cri.streaming.ws_session import WsSession

log = logging.getLogger("cri.streaming.portforward")

# A WebSocket port-forward opens a connection per port of its request at once (a SPDY one only as its
# client opens streams): this bounds what one URL makes the daemon open. kubectl forwards a handful.
MAX_FORWARDED_PORTS = 128

# Opens a TCP socket to 127.0.0.1:port as the pod sees it (created in the pod's netns).
Connector = Callable[[int], Awaitable[socket.socket]]


async def forward(port: int, data: Source, out: Sink, connect: Connector) -> None:
    """Copy both ways until both directions end; half-closes are passed on."""
    sock = await connect(port)
    reader, writer = await asyncio.open_connection(sock=sock)

    async def upstream() -> None:
        try:
            while True:
                chunk = await data.read()
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()

    async def downstream() -> None:
        try:
            while True:
                chunk = await reader.read(64 * 1024)
                if not chunk:
                    break
                await out.write(chunk)
        finally:
            with contextlib.suppress(Exception):
                await out.close()

    up = asyncio.create_task(upstream())
    down = asyncio.create_task(downstream())
    try:
        # The pod closing its side ends the forward; the client's end only half-closes.
        await down
        if not up.done():
            up.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await up
    finally:
        for task in (up, down):
            task.cancel()
        writer.close()


def _error_text(port: int, pod_id: str, exc: BaseException) -> str:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"error forwarding port {port} to pod {pod_id}, uid : {reason}"


# --- SPDY ----------------------------------------------------------------------------------------------


@dataclass
class _Pair:
    request_id: str
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    timer: asyncio.TimerHandle | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class SpdyPortForward:
    """Accepts stream pairs on one SPDY session and forwards each pair's connection."""

    def __init__(self, pod_id: str, connect: Connector, creation_timeout: float) -> None:
        self.pod_id = pod_id
        self.connect = connect
        self.creation_timeout = creation_timeout
        self.pairs: dict[str, _Pair] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: SpdySession | None = None

    def on_stream(self, stream: SpdyStream) -> None:
        assert self.session is not None
        port_text = stream.header("port")
        stream_type = stream.header("streamType")
        try:
            port = int(port_text)
            valid_port = 0 < port < 65536
        except ValueError:
            valid_port = False
        if not valid_port or stream_type not in ("data", "error"):
            log.info("refusing port-forward stream", extra={"port": port_text, "stream_type": stream_type})
            stream.refuse()
            return
        self.session.reply(stream, reads=stream_type == "data")
        request_id = stream.header("requestID")
        if not request_id:
            request_id = str(stream.id if stream_type == "error" else stream.id - 2)
        pair = self.pairs.get(request_id)
        if pair is None:
            pair = self.pairs[request_id] = _Pair(request_id)
            loop = asyncio.get_running_loop()
            pair.timer = loop.call_later(self.creation_timeout, self._expire, request_id)
        if getattr(pair, stream_type) is not None:
            stream.reads = False
            self._spawn(
                self._write_error(
                    stream,
                    f"error processing stream for request {request_id}: "
                    f"{stream_type} stream already assigned",
                )
            )
            return
        setattr(pair, stream_type, stream)
        if pair.data is not None and pair.error is not None:
            if pair.timer is not None:
                pair.timer.cancel()
            del self.pairs[request_id]
            self._spawn(self._run_pair(port, pair.data, pair.error))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _expire(self, request_id: str) -> None:
        """A pair whose other stream never came: its data stream is reset, its error stream told why."""
        pair = self.pairs.pop(request_id, None)
        if pair is None:
            return
        if pair.data is not None:
            pair.data.refuse(spdy.CANCEL)
        if pair.error is not None:
            self._spawn(
                self._write_error(pair.error, f"timed out waiting for streams of request {request_id}")
            )

    async def _write_error(self, stream: SpdyStream, text: str) -> None:
        """Write ``text`` on an error stream, close it and forget it."""
        with contextlib.suppress(Exception):
            await stream.write(text.encode())
            await stream.close()
        if self.session is not None:
            self.session.forget(stream)

    async def _run_pair(self, port: int, data: SpdyStream, error: SpdyStream) -> None:
        try:
            await forward(port, data, data, self.connect)
        except Exception as exc:
            log.info("port-forward failed", extra={"pod_id": self.pod_id, "port": port, "error": str(exc)})
            with contextlib.suppress(Exception):
                await error.write(_error_text(port, self.pod_id, exc).encode())
        finally:
            with contextlib.suppress(Exception):
                await data.close()
            with contextlib.suppress(Exception):
                await error.close()
            if self.session is not None:
                self.session.forget(data)
                self.session.forget(error)

    async def close(self) -> None:
        for pair in self.pairs.values():
            if pair.timer is not None:
                pair.timer.cancel()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# --- WebSocket -----------------------------------------------------------------------------------------


async def websocket_portforward(
    session: WsSession, pod_id: str, ports: list[int], connect: Connector
) -> None:
    """One connection per requested port, for the life of the WebSocket."""

    async def one(index: int, port: int) -> None:
        data = session.channels[2 * index]
        error = session.channels[2 * index + 1]
        try:
            await forward(port, data, data, connect)
        except Exception as exc:
            log.info("port-forward failed", extra={"pod_id": pod_id, "port": port, "error": str(exc)})
            with contextlib.suppress(Exception):
                await error.write(_error_text(port, pod_id, exc).encode())

    for i, port in enumerate(ports):
        session.channels[2 * i + 1].ignore_input()  # error channels only carry our messages
        prefix = struct.pack("<H", port)
        await session.channels[2 * i].write(prefix)
        await session.channels[2 * i + 1].write(prefix)
    await asyncio.gather(*(one(i, p) for i, p in enumerate(ports)))
