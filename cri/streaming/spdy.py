"""SPDY/3.1 framing: frame layout, the zlib header-block codec with the protocol's dictionary, a parser.

Kubernetes clients (kubectl, crictl) upgrade exec/attach/port-forward connections to ``SPDY/3.1`` and
then open one stream per channel. This module knows only bytes on the wire; the session logic (streams,
flow control, replies) lives in ``spdy_session``.

Wire layout (all integers big-endian):

- control frame: ``1 | version(15) | type(16) | flags(8) | length(24) | payload``
- data frame:    ``0 | stream-id(31) | flags(8) | length(24) | data``

Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are ``count(32)`` then ``len(32) name len(32) value`` per
pair (several values of one name joined by NUL), compressed with one zlib stream per direction for the
whole session, primed with the SPDY/3 dictionary and flushed with Z_SYNC_FLUSH after every block.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

VERSION = 3

# Control frame types.
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

# Flags.
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01

# RST_STREAM status codes.
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
UNSUPPORTED_VERSION = 4
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9
FRAME_TOO_LARGE = 11

# GOAWAY status codes.
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

# SETTINGS ids we act on.
SETTINGS_MAX_CONCURRENT_STREAMS = 4
SETTINGS_INITIAL_WINDOW_SIZE = 7

DEFAULT_WINDOW = 64 * 1024
MAX_WINDOW = 0x7FFFFFFF
MAX_LENGTH = 0xFFFFFF

# What we accept from a peer. The protocol allows 16 MiB frames, but a frame is buffered whole before it
# is handled, so these bound a connection's memory. Kubernetes' clients copy stdin and port-forward data
# in 32 KiB writes (one DATA frame each) and their header blocks hold a few short headers.
MAX_DATA_IN = 1024 * 1024
MAX_CONTROL_IN = 64 * 1024
MAX_HEADER_BLOCK = 64 * 1024  # decompressed (a zlib bomb stops here)
MAX_HEADERS = 100  # name/value pairs of one block, counting each NUL-separated value

# The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1): the
# length-prefixed words below, then the plain-text tail. Its Adler-32 (the zlib dictionary id) is
# 0xE3C6A7C2; tests check it.
_DICTIONARY_WORDS = [
    *[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
    ],
    *["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"],
]
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = (
    b"".join(struct.pack(">I", len(w)) + w.encode() for w in _DICTIONARY_WORDS) + _DICTIONARY_TAIL.encode()
)

Headers = dict[str, list[str]]


class ProtocolError(Exception):
    """The peer sent something SPDY does not allow; the session answers with GOAWAY."""


@dataclass(frozen=True)
class ControlFrame:
    type: int
    flags: int
    payload: bytes
    version: int = VERSION


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    flags: int
    data: bytes


Frame = ControlFrame | DataFrame


# --- encoding ------------------------------------------------------------------------------------------


def control(type_: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError("control frame payload too large")
    return struct.pack(">HHI", 0x8000 | VERSION, type_, (flags << 24) | len(payload)) + payload


def data(stream_id: int, data_: bytes, fin: bool = False) -> bytes:
    if len(data_) > MAX_LENGTH:
        raise ValueError("data frame too large")
    flags = FLAG_FIN if fin else 0
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data_)) + data_


def rst_stream(stream_id: int, status: int) -> bytes:
    return control(RST_STREAM, 0, struct.pack(">II", stream_id & 0x7FFFFFFF, status))


def settings(values: dict[int, int], flags: int = 0) -> bytes:
    body = struct.pack(">I", len(values))
    for key, value in values.items():
        body += struct.pack(">II", key & 0xFFFFFF, value)
    return control(SETTINGS, flags, body)


def ping(ping_id: int) -> bytes:
    return control(PING, 0, struct.pack(">I", ping_id))


def goaway(last_good_stream_id: int, status: int = GOAWAY_OK) -> bytes:
    return control(GOAWAY, 0, struct.pack(">II", last_good_stream_id & 0x7FFFFFFF, status))


def window_update(stream_id: int, delta: int) -> bytes:
    return control(WINDOW_UPDATE, 0, struct.pack(">II", stream_id & 0x7FFFFFFF, delta & 0x7FFFFFFF))


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block; names lower-cased as SPDY/3 requires."""
    out = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        raw_name = name.lower().encode()
        raw_value = "\0".join(values).encode()
        out.append(
            struct.pack(">I", len(raw_name)) + raw_name + struct.pack(">I", len(raw_value)) + raw_value
        )
    return b"".join(out)


def decode_header_block(block: bytes) -> Headers:
    headers: Headers = {}
    values = 0
    try:
        (count,) = struct.unpack_from(">I", block, 0)
        if count > MAX_HEADERS:
            raise ProtocolError(f"header block of {count} headers (at most {MAX_HEADERS})")
        pos = 4
        for _ in range(count):
            (n,) = struct.unpack_from(">I", block, pos)
            name = block[pos + 4 : pos + 4 + n].decode()
            pos += 4 + n
            (n,) = struct.unpack_from(">I", block, pos)
            value = block[pos + 4 : pos + 4 + n].decode()
            if len(value) != n and n:
                raise ProtocolError("truncated header value")
            pos += 4 + n
            if not name or name != name.lower():
                raise ProtocolError(f"invalid header name {name!r}")
            parts = value.split("\0")
            values += len(parts)
            if values > MAX_HEADERS:
                raise ProtocolError(f"header block of more than {MAX_HEADERS} values")
            headers.setdefault(name, []).extend(parts)
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed header block: {exc}") from None
    if pos != len(block):
        raise ProtocolError("trailing bytes after the header block")
    return headers


class HeaderCompressor:
    """One direction's zlib stream: every block is flushed so the peer can decode it at once."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(
            zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY
        )

    def compress(self, headers: Headers) -> bytes:
        return self._z.compress(encode_header_block(headers)) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    def __init__(self) -> None:
        self._z = zlib.decompressobj(15, zdict=DICTIONARY)

    def decompress(self, chunk: bytes) -> Headers:
        try:
            block = self._z.decompress(chunk, MAX_HEADER_BLOCK + 1)
        except zlib.error as exc:
            raise ProtocolError(f"header block does not decompress: {exc}") from None
        if self._z.unconsumed_tail or len(block) > MAX_HEADER_BLOCK:
            raise ProtocolError(f"header block larger than {MAX_HEADER_BLOCK} bytes")
        return decode_header_block(block)


def syn_reply(compressor: HeaderCompressor, stream_id: int, headers: Headers, fin: bool = False) -> bytes:
    body = struct.pack(">I", stream_id & 0x7FFFFFFF) + compressor.compress(headers)
    return control(SYN_REPLY, FLAG_FIN if fin else 0, body)


# --- decoding ------------------------------------------------------------------------------------------


class FrameParser:
    """Incremental: ``feed`` bytes as they arrive, iterate complete frames.

    A frame longer than its kind's limit is refused from its header, before its payload is buffered.
    """

    def __init__(self, max_length: int = MAX_LENGTH, max_control: int | None = None) -> None:
        self._buf = bytearray()
        self._max = max_length
        self._max_control = max_length if max_control is None else max_control

    def feed(self, chunk: bytes) -> Iterator[Frame]:
        self._buf += chunk
        while len(self._buf) >= 8:
            first, second = struct.unpack_from(">II", self._buf, 0)
            length = second & 0xFFFFFF
            limit = self._max_control if first & 0x80000000 else self._max
            if length > limit:
                raise ProtocolError(f"frame of {length} bytes exceeds {limit}")
            if len(self._buf) < 8 + length:
                return
            payload = bytes(self._buf[8 : 8 + length])
            del self._buf[: 8 + length]
            flags = second >> 24
            if first & 0x80000000:
                yield ControlFrame(
                    type=first & 0xFFFF, flags=flags, payload=payload, version=(first >> 16) & 0x7FFF
                )
            else:
                yield DataFrame(stream_id=first & 0x7FFFFFFF, flags=flags, data=payload)

    @property
    def pending(self) -> int:
        return len(self._buf)


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    associated: int
    priority: int
    fin: bool
    unidirectional: bool
    headers: Headers


def parse_syn_stream(frame: ControlFrame, decompressor: HeaderDecompressor) -> SynStream:
    if len(frame.payload) < 10:
        raise ProtocolError("SYN_STREAM too short")
    stream_id, assoc, pri, _slot = struct.unpack_from(">IIBB", frame.payload, 0)
    return SynStream(
        stream_id=stream_id & 0x7FFFFFFF,
        associated=assoc & 0x7FFFFFFF,
        priority=pri >> 5,
        fin=bool(frame.flags & FLAG_FIN),
        unidirectional=bool(frame.flags & FLAG_UNIDIRECTIONAL),
        headers=decompressor.decompress(frame.payload[10:]),
    )


def parse_stream_headers(frame: ControlFrame, decompressor: HeaderDecompressor) -> tuple[int, Headers]:
    """SYN_REPLY and HEADERS: stream id then a header block."""
    if len(frame.payload) < 4:
        raise ProtocolError("frame too short")
    (stream_id,) = struct.unpack_from(">I", frame.payload, 0)
    return stream_id & 0x7FFFFFFF, decompressor.decompress(frame.payload[4:])


def parse_two_words(frame: ControlFrame) -> tuple[int, int]:
    """RST_STREAM, GOAWAY and WINDOW_UPDATE carry two 32-bit words (the first 31-bit)."""
    if len(frame.payload) != 8:
        raise ProtocolError(f"control frame type {frame.type} must carry 8 bytes")
    a, b = struct.unpack(">II", frame.payload)
    return a & 0x7FFFFFFF, b


def parse_settings(frame: ControlFrame) -> dict[int, int]:
    try:
        (count,) = struct.unpack_from(">I", frame.payload, 0)
        if len(frame.payload) != 4 + 8 * count:
            raise ProtocolError("SETTINGS length does not match its count")
        values = {}
        for i in range(count):
            key, value = struct.unpack_from(">II", frame.payload, 4 + 8 * i)
            values[key & 0xFFFFFF] = value
        return values
    except struct.error:
        raise ProtocolError("malformed SETTINGS") from None


def parse_ping(frame: ControlFrame) -> int:
    if len(frame.payload) != 4:
        raise ProtocolError("PING must carry 4 bytes")
    return int(struct.unpack(">I", frame.payload)[0])
