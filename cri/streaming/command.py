"""Exec and attach over either wire protocol: one session shape and the one function that runs it.

SPDY and WebSocket differ only in how the client's stdio channels come to exist and how the outcome
is reported. Over SPDY the client opens one stream per channel (named by its ``streamType`` header) and
the status goes on the ``error`` stream, which is then half-closed. Over WebSocket the channels are
numbers fixed by the subprotocol, the server announces the session with an empty message, and the
status is a message on the error channel. ``CommandSession`` is that difference; ``serve`` is the rest
(run the transport's frame loop, open the channels, run the exec or attach, report, tear down), so the
order of those steps cannot drift apart between the two protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from cri.streaming import remotecommand as rc
from cri.streaming.spdy_session import SpdySession, SpdyStream
from cri.streaming.ws_session import WsSession

log = logging.getLogger("cri.streaming")

# The channel protocols (X-Stream-Protocol-Version over SPDY, the subprotocol over WebSocket).
V1 = "channel.k8s.io"
V2 = "v2.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V5 = "v5.channel.k8s.io"
SPDY_REMOTECOMMAND = [V4, V3, V2, V1]
WS_REMOTECOMMAND = [V5, V4, "v4.base64.channel.k8s.io", V1, "base64.channel.k8s.io"]

STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)  # WebSocket channel numbers
READ_STREAMS = ("stdin", "resize")  # the SPDY streams whose input is read; the others only carry output
WS_CHANNELS = RESIZE + 1


class Stdio(Protocol):
    """What an exec or attach request asks for (``ExecRequest`` and ``AttachRequest`` both have it)."""

    @property
    def tty(self) -> bool: ...

    @property
    def stdin(self) -> bool: ...

    @property
    def stdout(self) -> bool: ...

    @property
    def stderr(self) -> bool: ...


class Transport(Protocol):
    """A session's frame loop and its orderly close (``SpdySession``, ``WsSession``)."""

    async def run(self) -> None: ...

    async def close(self) -> None: ...


class CommandSession(Transport, Protocol):
    """One exec or attach connection, whatever protocol carries it.

    The stdio itself is protocol-neutral already: ``open`` hands out ``rc.Channels`` whose stdout and
    stderr are sinks (``write``/``close``) and whose stdin and resize are sources (``read``).
    """

    closed: asyncio.Event  # set when the connection is lost or closed
    json_status: bool  # the protocol reports the Kubernetes Status JSON (v4+), not just a failure's text

    async def open(self) -> rc.Channels | None:
        """The client's channels, once usable; None when the client never opened them all."""

    async def report(self, payload: bytes) -> None:
        """Send the encoded status on the error channel, best effort (the client may be gone)."""


@contextlib.asynccontextmanager
async def running(session: Transport) -> AsyncIterator[asyncio.Task[None]]:
    """The session's frame loop as a task for the body's duration, then the close and the loop's end."""
    loop_task = asyncio.create_task(session.run())
    try:
        yield loop_task
    finally:
        await session.close()
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)


async def serve(session: CommandSession, runner: rc.Runner) -> None:
    """Run an exec or attach over ``session`` to its end; report its status if the client is still there."""
    async with running(session):
        try:
            channels = await session.open()
            if channels is None:
                return
            status = await runner(channels)
            if not session.closed.is_set():
                await session.report(rc.encode_status(status, session.json_status))
        except ConnectionError:
            pass  # the client left; the runner has already ended what it started


class SpdyCommandSession:
    """Exec/attach over SPDY/3.1 (after the 101 answer chose ``protocol``)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: str,
        request: Stdio,
        idle_timeout: float,
        creation_timeout: float,
    ) -> None:
        self.protocol = protocol
        self.tty = request.tty
        self.creation_timeout = creation_timeout
        self.json_status = protocol == V4
        self.wanted = {"error"}
        for name, on in (("stdin", request.stdin), ("stdout", request.stdout), ("stderr", request.stderr)):
            if on:
                self.wanted.add(name)
        if request.tty and protocol in (V3, V4):
            self.wanted.add("resize")
        self.streams: dict[str, SpdyStream] = {}
        self._all_here = asyncio.Event()
        self.transport = SpdySession(reader, writer, self._on_stream, idle_timeout)
        self.closed = self.transport.closed

    def _on_stream(self, stream: SpdyStream) -> None:
        kind = stream.header("streamType")
        if kind not in self.wanted or kind in self.streams:
            # Nothing would read it: refused, so what the client sends on it is not kept.
            log.info("refusing unexpected stream", extra={"stream_type": kind[:64]})
            stream.refuse()
            return
        self.transport.reply(stream, reads=kind in READ_STREAMS)
        self.streams[kind] = stream
        if set(self.streams) == self.wanted:
            self._all_here.set()

    async def run(self) -> None:
        await self.transport.run()

    async def open(self) -> rc.Channels | None:
        waiter = asyncio.create_task(self._all_here.wait())
        closed = asyncio.create_task(self.closed.wait())
        await asyncio.wait(
            [waiter, closed], timeout=self.creation_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        closed.cancel()
        if not self._all_here.is_set():
            log.info(
                "client did not open its streams", extra={"missing": sorted(self.wanted - set(self.streams))}
            )
            return None
        if self.protocol == V1 and "stdin" in self.streams:
            await self.streams["stdin"].close()  # as v1 servers do: our side of stdin is half-closed at once
        return rc.Channels(
            stdin=self.streams.get("stdin"),
            stdout=self.streams.get("stdout"),
            stderr=self.streams.get("stderr"),
            resize=self.streams.get("resize"),
            gone=self.closed,
            tty=self.tty,
        )

    async def report(self, payload: bytes) -> None:
        error = self.streams["error"]
        with contextlib.suppress(Exception):
            if payload:
                await error.write(payload)
            await error.close()

    async def close(self) -> None:
        await self.transport.close()


class WsCommandSession:
    """Exec/attach over a WebSocket whose handshake chose one of ``WS_REMOTECOMMAND``."""

    def __init__(self, transport: WsSession, request: Stdio) -> None:
        self.transport = transport
        self.request = request
        self.closed = transport.closed
        self.json_status = transport.protocol.startswith(("v4.", "v5."))

    async def run(self) -> None:
        await self.transport.run()

    async def open(self) -> rc.Channels:
        request = self.request
        # An empty message on the lowest writable channel tells the client the session is up.
        first = STDOUT if request.stdout else STDERR if request.stderr else ERROR
        ch = self.transport.channels
        for number, channel in enumerate(ch):
            if not ((number == STDIN and request.stdin) or (number == RESIZE and request.tty)):
                channel.ignore_input()  # output channels and channels not asked for
        await self.transport.send(first, b"")
        return rc.Channels(
            stdin=ch[STDIN] if request.stdin else None,
            stdout=ch[STDOUT] if request.stdout else None,
            stderr=ch[STDERR] if request.stderr else None,
            resize=ch[RESIZE] if request.tty else None,
            gone=self.closed,
            tty=request.tty,
        )

    async def report(self, payload: bytes) -> None:
        if payload:
            with contextlib.suppress(ConnectionError):
                await self.transport.send(ERROR, payload)

    async def close(self) -> None:
        await self.transport.close()
