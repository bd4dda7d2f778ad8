"""A server-side WebSocket session carrying Kubernetes' channel protocols (asyncio over wsproto).

Why wsproto: it is sans-I/O (the python-hyper project, on h11), so the same asyncio connection
handler that already parsed the HTTP request for routing and token checks hands the bytes over, and
the session keeps control of reading and writing (backpressure through the transport, one idle timer
for both protocols). The tests drive it with a different implementation (the ``websockets`` client).

Framing of the channel protocols: every message starts with the channel number — a byte
(``channel.k8s.io``, ``v4.channel.k8s.io``, ``v5.channel.k8s.io``) or an ASCII digit followed by the
base64 of the payload (``base64.channel.k8s.io``, ``v4.base64.channel.k8s.io``). In v5 a message
``[255, n]`` means the peer closed channel n (used for stdin's end).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from cri.streaming.idle import IdleClock
from cri.streaming.inbox import Inbox

log = logging.getLogger("cri.streaming.websocket")

CLOSE_CHANNEL = 255
# A message is reassembled from its fragments before its channel byte (and base64) can be read. Clients
# send stdin and port-forward data in 32 KiB writes; kubelet's own limit is 32 MiB.
MAX_MESSAGE = 4 * 1024 * 1024
RECV_BUFFER_LIMIT = 1024 * 1024  # unconsumed input of all channels: past it the socket is not read
WRITE_BUFFER_LIMIT = 1024 * 1024  # our replies (pongs) the client leaves unread: past it, neither


def is_base64(protocol: str) -> bool:
    return "base64" in protocol


class HandshakeRejected(Exception):
    pass


class WsChannel:
    """One numbered channel: readable (what the client sent on it) and writable."""

    def __init__(self, session: WsSession, number: int) -> None:
        self.session = session
        self.number = number
        self.inbox = Inbox()
        self.reads = True  # False: nothing reads this channel; what the client sends on it is dropped

    def ignore_input(self) -> None:
        self.reads = False
        self.inbox.discard()
        self.session._space_freed()

    async def read(self) -> bytes:
        chunk = await self.inbox.get()
        self.session._space_freed()
        return chunk

    async def write(self, data: bytes) -> None:
        await self.session.send(self.number, data)

    async def close(self) -> None:
        """Nothing to send: the channel protocols end channels by closing the connection."""


class WsSession:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: str,
        channels: int,
        idle_timeout: float,
        ws: WSConnection,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.base64 = is_base64(protocol)
        self.v5 = protocol.startswith("v5.")
        self.ws = ws
        self.channels = [WsChannel(self, i) for i in range(channels)]
        self.closed = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.idle = IdleClock(idle_timeout)
        self._partial: list[bytes | str] = []
        self._partial_size = 0

    # --- handshake ------------------------------------------------------------------------------------

    @staticmethod
    async def accept(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
        supported: list[str],
        channels: int,
        idle_timeout: float,
    ) -> WsSession:
        """Complete the opening handshake, choosing the client's first subprotocol we support.

        A client that offers none gets the plain binary channel protocol (as kubelet does).
        """
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(head)
        request = next((e for e in ws.events() if isinstance(e, Request)), None)
        if request is None:
            raise HandshakeRejected("not a WebSocket opening handshake")
        offered = list(request.subprotocols)
        chosen = next((p for p in offered if p in supported), None)
        if offered and chosen is None:
            body = f"none of the subprotocols {offered} is supported; supported: {supported}\n".encode()
            writer.write(
                ws.send(
                    RejectConnection(
                        status_code=400, headers=[(b"content-type", b"text/plain")], has_body=True
                    )
                )
            )
            writer.write(ws.send(RejectData(data=body)))
            await writer.drain()
            raise HandshakeRejected(body.decode().strip())
        writer.write(ws.send(AcceptConnection(subprotocol=chosen)))
        await writer.drain()
        return WsSession(reader, writer, chosen or "channel.k8s.io", channels, idle_timeout, ws)

    # --- the loop -------------------------------------------------------------------------------------

    async def run(self) -> None:
        watchdog = asyncio.create_task(self._idle_watchdog())
        try:
            while True:
                await self._space.wait()
                chunk = await self.reader.read(256 * 1024)
                self.idle.touch()
                try:
                    self.ws.receive_data(chunk or None)
                    for event in self.ws.events():
                        self._handle(event)
                except RemoteProtocolError as exc:
                    log.info("websocket protocol error", extra={"error": str(exc)})
                    break
                if not chunk or self.closed.is_set():
                    break
                if self.writer.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                    await self.writer.drain()
        except ConnectionError:
            pass
        finally:
            watchdog.cancel()
            self._lost()

    def _handle(self, event: object) -> None:
        if isinstance(event, BytesMessage | TextMessage):
            # One fragment at a time (a message can come as many tiny ones): the size is kept as it grows.
            self._partial.append(event.data if isinstance(event.data, str) else bytes(event.data))
            self._partial_size += len(event.data)
            if self._partial_size > MAX_MESSAGE:
                log.info("websocket message too big", extra={"max_bytes": MAX_MESSAGE})
                with _suppress_local():
                    self._write(self.ws.send(CloseConnection(code=1009, reason="message too big")))
                self._partial, self._partial_size = [], 0
                self.closed.set()
                return
            if event.message_finished:
                parts, self._partial, self._partial_size = self._partial, [], 0
                if isinstance(event, TextMessage):
                    self._on_message("".join(p for p in parts if isinstance(p, str)).encode())
                else:
                    self._on_message(b"".join(p for p in parts if isinstance(p, bytes)))
        elif isinstance(event, Ping):
            self._write(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            with _suppress_local():
                self._write(self.ws.send(event.response()))
            self.closed.set()

    def _on_message(self, message: bytes) -> None:
        if not message:
            return
        if self.v5 and message[0] == CLOSE_CHANNEL:
            if len(message) >= 2 and message[1] < len(self.channels):
                self.channels[message[1]].inbox.close()
            return
        number = message[0]
        payload = message[1:]
        if self.base64:
            number -= ord("0")
            try:
                payload = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                log.info("bad base64 in websocket message", extra={"channel": number})
                return
        if not 0 <= number < len(self.channels):
            return  # a channel this session does not have: ignored, as kubelet does
        channel = self.channels[number]
        if channel.inbox.closed or not channel.reads:
            return
        channel.inbox.put(payload)
        if sum(c.inbox.buffered for c in self.channels) >= RECV_BUFFER_LIMIT:
            self._space.clear()  # stop reading the socket until a consumer catches up

    def _space_freed(self) -> None:
        if sum(c.inbox.buffered for c in self.channels) < RECV_BUFFER_LIMIT:
            self._space.set()

    def _lost(self) -> None:
        self.closed.set()
        self._space.set()
        for channel in self.channels:
            channel.inbox.close()

    async def _idle_watchdog(self) -> None:
        await self.idle.wait_expired()
        log.info("websocket session idle, closing", extra={"idle_timeout_s": self.idle.timeout})
        with _suppress_local():
            self._write(self.ws.send(CloseConnection(code=1001, reason="idle timeout")))
        self.writer.close()
        self._lost()

    # --- writing --------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.idle.touch()
            self.writer.write(data)

    async def send(self, channel: int, data: bytes) -> None:
        if self.closed.is_set() or self.writer.is_closing():
            raise ConnectionResetError("websocket closed")
        if self.base64:
            message: BytesMessage | TextMessage = TextMessage(
                data=chr(ord("0") + channel) + base64.b64encode(data).decode()
            )
        else:
            message = BytesMessage(data=bytes([channel]) + data)
        try:
            self._write(self.ws.send(message))
        except LocalProtocolError:
            raise ConnectionResetError("websocket closing") from None
        await self.writer.drain()

    async def close(self, code: int = 1000, reason: str = "", linger: float = 5.0) -> None:
        """Close handshake, then wait (bounded) for the client to answer and hang up."""
        if not self.writer.is_closing() and not self.closed.is_set():
            with _suppress_local():
                self._write(self.ws.send(CloseConnection(code=code, reason=reason)))
            try:
                await self.writer.drain()
                await asyncio.wait_for(self.closed.wait(), linger)
            except (ConnectionError, TimeoutError):
                pass
        self._lost()
        self.writer.close()


class _suppress_local:
    """Ignore wsproto's refusal to send after the connection state moved on."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return exc_type is not None and issubclass(exc_type, LocalProtocolError)  # type: ignore[arg-type]
