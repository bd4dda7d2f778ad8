"""A server-side SPDY/3.1 session on an upgraded connection (asyncio): streams, replies, flow control.

Clients open every stream (odd ids); the server replies to each with SYN_REPLY or refuses it with
RST_STREAM. Data the client sends is queued per stream and returned to the sender's window as it is
consumed (WINDOW_UPDATE for the stream and the session).

Send-side flow control: SPDY/3.1 gives each stream and the session a 64 KiB window that the receiver
replenishes with WINDOW_UPDATE. Kubernetes' own client (spdystream, used by kubectl and crictl) never
sends WINDOW_UPDATE, so honouring the default window against it would stall every session after
64 KiB. The session therefore honours the peer's windows once the peer shows it implements flow
control (it sent SETTINGS or WINDOW_UPDATE), and the session-wide window once the peer returns some of
it (SPDY/3 peers have per-stream windows only); otherwise TCP's own backpressure (the transport's write
buffer, awaited through ``drain``) is what bounds memory.

Receive side: whatever a peer sends is held only for a reader. A stream the handler does not read (an
exec's stdout, a port-forward's error stream) has its data dropped and its window given back; at most
``MAX_STREAMS`` streams are open at once. Data waiting for a reader is bounded per stream and per
session: past those, a peer without flow control (spdystream) is paused (the socket is not read until
the data is consumed), and a stream of a peer that does flow control, which overruns the window it was
given, is reset with FLOW_CONTROL_ERROR. Replies the peer provokes (PING, RST_STREAM) stop the reading
too while the peer does not read them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from cri.streaming import spdy
from cri.streaming.idle import IdleClock
from cri.streaming.inbox import Inbox

log = logging.getLogger("cri.streaming.spdy")

MAX_DATA_FRAME = 128 * 1024
MAX_STREAMS = 100  # open at once per session (SPDY's recommended minimum for MAX_CONCURRENT_STREAMS)
# Unconsumed input of a peer without flow control (spdystream): past this much on one stream, or on all
# of a session's streams, the socket is not read until it is consumed.
RECV_BUFFER_LIMIT = 1024 * 1024
SESSION_BUFFER_LIMIT = 4 * 1024 * 1024
# A peer that does flow control never has more than the window we gave it (64 KiB) unconsumed on a
# stream; past twice that it ignores its windows, and the stream is reset rather than the socket paused
# (pausing would also hold back the WINDOW_UPDATEs our own sending may be waiting for).
FLOW_CONTROLLED_LIMIT = 2 * spdy.DEFAULT_WINDOW
# Frames we queued for the peer (our replies to its PINGs and bad frames included): past this, the
# socket is not read until the peer reads.
WRITE_BUFFER_LIMIT = 1024 * 1024


class StreamClosed(Exception):
    """Write to a stream the peer has reset or the session has lost."""


class SpdyStream:
    def __init__(self, session: SpdySession, syn: spdy.SynStream, send_window: int) -> None:
        self.session = session
        self.id = syn.stream_id
        self.headers = syn.headers
        self.inbox = Inbox(closed=syn.fin or syn.unidirectional)
        self.local_closed = False
        self.reset = False
        self.send_window = send_window
        self.replied = False
        self.reads = True  # False: the handler never reads this stream; its data is dropped

    @property
    def remote_closed(self) -> bool:
        return self.inbox.closed

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    # --- receiving ------------------------------------------------------------------------------------

    def _deliver(self, data: bytes, fin: bool) -> None:
        self.inbox.put(data)
        self.session._buffered += len(data)
        if fin:
            self.inbox.close()

    def _abort(self, discard: bool = True) -> None:
        """The stream is over: reset (its unread input dropped) or its session lost (input kept)."""
        self.reset = True
        self.local_closed = True
        if discard:
            self.session._buffered -= self.inbox.discard()
        self.inbox.close()
        self.session._space.set()

    async def read(self) -> bytes:
        """The next chunk the peer sent; b"" once it closed its side (FIN, RST or lost session)."""
        chunk = await self.inbox.get()
        if chunk:
            self.session._buffered -= len(chunk)
            self.session._space.set()
            self.session._consumed(self, len(chunk))
        return chunk

    # --- sending --------------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.reset or self.local_closed:
                raise StreamClosed(f"stream {self.id} is closed")
            n = await self.session._reserve(self, min(len(view), MAX_DATA_FRAME))
            await self.session._send(spdy.data(self.id, bytes(view[:n])))
            view = view[n:]

    async def close(self) -> None:
        """Half-close our side (DATA with FIN); idempotent."""
        if self.local_closed or self.reset:
            return
        self.local_closed = True
        await self.session._send(spdy.data(self.id, b"", fin=True))

    def refuse(self, status: int = spdy.REFUSED_STREAM) -> None:
        """Reset the stream (RST_STREAM) and forget it."""
        self.session._write(spdy.rst_stream(self.id, status))
        self._abort()
        self.session.forget(self)


StreamHandler = Callable[[SpdyStream], Awaitable[None] | None]


class SpdySession:
    """Runs the frame loop of one upgraded connection; ``on_stream`` decides about every new stream.

    ``on_stream`` is called synchronously for each SYN_STREAM (in arrival order); it calls
    ``session.reply(stream)`` or ``stream.refuse()``. The loop ends when the peer closes the
    connection, sends GOAWAY and has no streams left, the session is closed, or it idles out.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_stream: Callable[[SpdyStream], None],
        idle_timeout: float,
        initial: bytes = b"",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.on_stream = on_stream
        self._initial = initial
        self.streams: dict[int, SpdyStream] = {}
        self._compressor = spdy.HeaderCompressor()
        self._decompressor = spdy.HeaderDecompressor()
        self._last_peer_stream = 0
        self._peer_initial_window = spdy.DEFAULT_WINDOW
        self._session_send_window = spdy.DEFAULT_WINDOW
        self._flow_control = False  # becomes True when the peer shows it does flow control
        self._session_flow = False  # ... and this once it returns session window (SPDY/3.1, not 3)
        self._window_changed = asyncio.Event()
        self._unacked: dict[int, int] = {}
        self._session_unacked = 0
        self._buffered = 0  # unconsumed input of all streams
        self._space = asyncio.Event()  # set whenever some input was consumed or dropped
        self.closed = asyncio.Event()
        self.idle = IdleClock(idle_timeout)
        self.goaway_received = False
        self.closing = False

    # --- the loop -------------------------------------------------------------------------------------

    async def run(self) -> None:
        parser = spdy.FrameParser(spdy.MAX_DATA_IN, spdy.MAX_CONTROL_IN)
        watchdog = asyncio.create_task(self._idle_watchdog())
        try:
            pending = self._initial
            while True:
                if pending:
                    chunk, pending = pending, b""
                else:
                    chunk = await self.reader.read(256 * 1024)
                if not chunk:
                    break
                self.idle.touch()
                for frame in parser.feed(chunk):
                    await self._handle(frame)
                if self.writer.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                    await self.writer.drain()  # a peer that provokes replies but never reads them
        except spdy.ProtocolError as exc:
            log.info("spdy protocol error", extra={"error": str(exc)})
            self._write(spdy.goaway(self._last_peer_stream, spdy.GOAWAY_PROTOCOL_ERROR))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            watchdog.cancel()
            self._lost()

    def _lost(self) -> None:
        self.closed.set()
        for stream in self.streams.values():
            stream._abort(discard=False)
        self._window_changed.set()
        self._space.set()

    async def _idle_watchdog(self) -> None:
        await self.idle.wait_expired()
        log.info("spdy session idle, closing", extra={"idle_timeout_s": self.idle.timeout})
        self._write(spdy.goaway(self._last_peer_stream))
        self.writer.close()
        self._lost()

    async def _handle(self, frame: spdy.Frame) -> None:
        if isinstance(frame, spdy.DataFrame):
            await self._on_data(frame)
            return
        if frame.version != spdy.VERSION:
            raise spdy.ProtocolError(f"SPDY version {frame.version} is not 3")
        if frame.type == spdy.SYN_STREAM:
            self._on_syn_stream(spdy.parse_syn_stream(frame, self._decompressor))
        elif frame.type == spdy.RST_STREAM:
            stream_id, _status = spdy.parse_two_words(frame)
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream._abort()
        elif frame.type == spdy.SETTINGS:
            self._flow_control = True
            values = spdy.parse_settings(frame)
            if spdy.SETTINGS_INITIAL_WINDOW_SIZE in values:
                new = values[spdy.SETTINGS_INITIAL_WINDOW_SIZE]
                if new > spdy.MAX_WINDOW:
                    raise spdy.ProtocolError("initial window too large")
                delta = new - self._peer_initial_window
                self._peer_initial_window = new
                for stream in self.streams.values():
                    stream.send_window += delta
                self._window_changed.set()
        elif frame.type == spdy.PING:
            ping_id = spdy.parse_ping(frame)
            if ping_id % 2 == 1:  # the client's ping: echo it
                self._write(spdy.ping(ping_id))
        elif frame.type == spdy.GOAWAY:
            self.goaway_received = True
        elif frame.type == spdy.HEADERS:
            # Decompressed to keep the zlib context in step; streams are routed by their SYN_STREAM's
            # headers alone, so later ones are not kept (they could grow a stream without bound).
            stream_id, _headers = spdy.parse_stream_headers(frame, self._decompressor)
            stream = self.streams.get(stream_id)
            if stream is not None and frame.flags & spdy.FLAG_FIN:
                stream._deliver(b"", True)
        elif frame.type == spdy.WINDOW_UPDATE:
            self._flow_control = True
            stream_id, delta = spdy.parse_two_words(frame)
            delta &= 0x7FFFFFFF
            if stream_id == 0:
                self._session_flow = True
                self._session_send_window += delta
            elif stream_id in self.streams:
                self.streams[stream_id].send_window += delta
            self._window_changed.set()
        elif frame.type == spdy.SYN_REPLY:
            raise spdy.ProtocolError("SYN_REPLY for a stream the server never opened")
        # Unknown control frame types are ignored, as the spec asks.

    def _on_syn_stream(self, syn: spdy.SynStream) -> None:
        if syn.stream_id % 2 == 0 or syn.stream_id <= self._last_peer_stream:
            self._write(spdy.rst_stream(syn.stream_id, spdy.PROTOCOL_ERROR))
            return
        self._last_peer_stream = syn.stream_id
        stream = SpdyStream(self, syn, self._peer_initial_window)
        if self.goaway_received or self.closing:
            stream.refuse()
            return
        if len(self.streams) >= MAX_STREAMS:
            log.info("spdy stream refused: too many open", extra={"max_streams": MAX_STREAMS})
            stream.refuse()
            return
        self.streams[syn.stream_id] = stream
        self.on_stream(stream)

    async def _on_data(self, frame: spdy.DataFrame) -> None:
        stream = self.streams.get(frame.stream_id)
        if stream is None or stream.remote_closed:
            if stream is None and frame.stream_id > self._last_peer_stream:
                self._write(spdy.rst_stream(frame.stream_id, spdy.INVALID_STREAM))
            elif frame.data:  # a bare FIN for a stream we are done with needs no answer
                self._write(spdy.rst_stream(frame.stream_id, spdy.STREAM_ALREADY_CLOSED))
            # Data we drop still counts against the session window: give it back.
            self._give_back(0, len(frame.data))
            return
        fin = bool(frame.flags & spdy.FLAG_FIN)
        if not stream.reads:
            self._give_back(stream.id, len(frame.data))
            if fin:
                stream.inbox.close()
            return
        if self._flow_control:
            if stream.inbox.buffered + len(frame.data) > FLOW_CONTROLLED_LIMIT:
                log.info("spdy stream overran its window", extra={"stream_id": stream.id})
                stream.refuse(spdy.FLOW_CONTROL_ERROR)
                self._give_back(0, len(frame.data))
                return
        else:
            while (
                stream.inbox.buffered >= RECV_BUFFER_LIMIT or self._buffered >= SESSION_BUFFER_LIMIT
            ) and not (self.closed.is_set() or stream.reset):
                self._space.clear()
                await self._space.wait()
            if stream.reset:
                return
        stream._deliver(frame.data, fin)

    # --- flow control ---------------------------------------------------------------------------------

    def _consumed(self, stream: SpdyStream, n: int) -> None:
        self._give_back(stream.id, n)

    def _give_back(self, stream_id: int, n: int) -> None:
        """Return consumed bytes to the peer's windows, in batches of at least 16 KiB."""
        if n <= 0 or self.closed.is_set():
            return
        self._session_unacked += n
        if self._session_unacked >= 16 * 1024:
            self._write(spdy.window_update(0, self._session_unacked))
            self._session_unacked = 0
        if stream_id:
            pending = self._unacked.get(stream_id, 0) + n
            stream = self.streams.get(stream_id)
            if pending >= 16 * 1024 or (stream is not None and stream.inbox.empty):
                if stream is not None and not stream.remote_closed:
                    self._write(spdy.window_update(stream_id, pending))
                pending = 0
            self._unacked[stream_id] = pending

    async def _reserve(self, stream: SpdyStream, wanted: int) -> int:
        """How many bytes ``stream`` may send now (waiting for window when the peer enforces it)."""
        while True:
            if self.closed.is_set() or stream.reset:
                raise StreamClosed(f"stream {stream.id} is closed")
            if not self._flow_control:
                return wanted
            session_window = self._session_send_window if self._session_flow else wanted
            allowed = min(wanted, stream.send_window, session_window)
            if allowed > 0:
                stream.send_window -= allowed
                self._session_send_window -= allowed
                return allowed
            self._window_changed.clear()
            await self._window_changed.wait()

    # --- writing --------------------------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        if self.writer.is_closing():
            return
        self.idle.touch()
        self.writer.write(frame)

    async def _send(self, frame: bytes) -> None:
        if self.closed.is_set() or self.writer.is_closing():
            raise StreamClosed("session closed")
        self._write(frame)
        try:
            await self.writer.drain()
        except ConnectionError:
            self._lost()
            raise StreamClosed("connection lost") from None

    def forget(self, stream: SpdyStream) -> None:
        """Drop a finished stream (port-forward opens two per connection over a long session), and any
        input of it nobody read."""
        self.streams.pop(stream.id, None)
        self._unacked.pop(stream.id, None)
        stream.reads = False
        if stream.inbox.buffered:
            self._buffered -= stream.inbox.discard()
            self._space.set()

    def reply(self, stream: SpdyStream, headers: spdy.Headers | None = None, reads: bool = True) -> None:
        """Accept a stream: SYN_REPLY. ``reads=False``: nothing will read it, drop what the peer sends."""
        stream.replied = True
        stream.reads = reads
        self._write(spdy.syn_reply(self._compressor, stream.id, headers or {}, fin=False))

    async def close(self, linger: float = 5.0) -> None:
        """GOAWAY, flush, half-close, then wait (bounded) for the peer to close before closing.

        Closing a socket with unread input makes the kernel send RST, which can destroy output
        the peer has not read yet; waiting for the peer's EOF avoids that.
        """
        self.closing = True
        if self.writer.is_closing():
            self._lost()
            return
        self._write(spdy.goaway(self._last_peer_stream))
        try:
            await self.writer.drain()
            if self.writer.can_write_eof():
                self.writer.write_eof()
            await asyncio.wait_for(self.closed.wait(), linger)  # run() sets it at the peer's EOF
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._lost()
            self.writer.close()
