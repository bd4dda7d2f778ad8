"""SPDY/3.1 framing checked against frames built by hand from the spec, byte by byte."""

from __future__ import annotations

import struct
import zlib

import pytest

from cri.streaming import spdy
from tests.spdy_client import DICTIONARY as CLIENT_DICTIONARY


def test_dictionary_is_the_spec_constant() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2
    assert spdy.DICTIONARY == CLIENT_DICTIONARY
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (spdy.ping(1), bytes.fromhex("80030006 00000004 00000001")),
        (spdy.rst_stream(5, spdy.CANCEL), bytes.fromhex("80030003 00000008 00000005 00000005")),
        (spdy.goaway(7), bytes.fromhex("80030007 00000008 00000007 00000000")),
        (spdy.window_update(3, 0x10000), bytes.fromhex("80030009 00000008 00000003 00010000")),
        (spdy.window_update(0, 1), bytes.fromhex("80030009 00000008 00000000 00000001")),
        (spdy.settings({7: 0x20000}), bytes.fromhex("80030004 0000000c 00000001 00000007 00020000")),
        (spdy.data(3, b"hi"), bytes.fromhex("00000003 00000002 6869")),
        (spdy.data(3, b"", fin=True), bytes.fromhex("00000003 01000000")),
    ],
)
def test_frames_encode_as_the_spec_lays_them_out(frame: bytes, expected: bytes) -> None:
    assert frame == expected


def _stored_zlib(dictionary_id: int, block: bytes, first: bool) -> bytes:
    """A zlib stream of one stored (uncompressed) deflate block, non-final: any inflater reads it."""
    head = b"\x78\xbb" + struct.pack(">I", dictionary_id) if first else b""
    return head + b"\x00" + struct.pack("<HH", len(block), len(block) ^ 0xFFFF) + block


def test_syn_stream_with_a_hand_built_header_block_is_parsed() -> None:
    block = (
        bytes.fromhex("00000002")
        + bytes.fromhex("0000000a") + b"streamtype" + bytes.fromhex("00000005") + b"error"
        + bytes.fromhex("00000004") + b"port" + bytes.fromhex("00000005") + b"80\x0081"
    )  # fmt: skip
    compressed = _stored_zlib(0xE3C6A7C2, block, first=True)
    payload = bytes.fromhex("00000001 00000000 6000") + compressed  # stream 1, priority 3
    frame = bytes.fromhex("80030001") + struct.pack(">I", 0x01000000 | len(payload)) + payload
    parser = spdy.FrameParser()
    frames = list(parser.feed(frame[:5])) + list(parser.feed(frame[5:]))
    assert len(frames) == 1 and isinstance(frames[0], spdy.ControlFrame)
    syn = spdy.parse_syn_stream(frames[0], spdy.HeaderDecompressor())
    assert (syn.stream_id, syn.priority, syn.fin) == (1, 3, True)
    assert syn.headers == {"streamtype": ["error"], "port": ["80", "81"]}


def test_the_decompressor_keeps_one_zlib_context_for_the_session() -> None:
    decompressor = spdy.HeaderDecompressor()
    one = bytes.fromhex("00000001 00000004") + b"port" + bytes.fromhex("00000002") + b"80"
    two = bytes.fromhex("00000001 00000004") + b"port" + bytes.fromhex("00000002") + b"81"
    assert decompressor.decompress(_stored_zlib(0xE3C6A7C2, one, True)) == {"port": ["80"]}
    assert decompressor.decompress(_stored_zlib(0, two, False)) == {"port": ["81"]}


def test_compressed_headers_inflate_with_plain_zlib_and_the_dictionary() -> None:
    compressor = spdy.HeaderCompressor()
    inflate = zlib.decompressobj(zdict=CLIENT_DICTIONARY)
    first = compressor.compress({"streamType": ["stdout"]})
    assert first[:2] == b"\x78\xbb" or (first[0] == 0x78 and first[1] & 0x20), "FDICT must be set"
    assert first[2:6] == bytes.fromhex("e3c6a7c2")
    assert (
        inflate.decompress(first)
        == bytes.fromhex("00000001 0000000a") + b"streamtype" + bytes.fromhex("00000006") + b"stdout"
    )
    assert inflate.decompress(compressor.compress({})) == bytes.fromhex("00000000")


def test_syn_reply_layout() -> None:
    frame = spdy.syn_reply(spdy.HeaderCompressor(), 5, {})
    assert frame[:4] == bytes.fromhex("80030002")
    assert frame[4] == 0  # no flags
    assert struct.unpack(">I", frame[4:8])[0] & 0xFFFFFF == len(frame) - 8
    assert frame[8:12] == bytes.fromhex("00000005")
    assert zlib.decompressobj(zdict=CLIENT_DICTIONARY).decompress(frame[12:]) == b"\x00\x00\x00\x00"


def test_parser_splits_coalesced_frames_and_rejects_bad_ones() -> None:
    stream = spdy.ping(1) + spdy.data(1, b"abc") + spdy.goaway(1)
    frames = list(spdy.FrameParser().feed(stream))
    assert [type(f).__name__ for f in frames] == ["ControlFrame", "DataFrame", "ControlFrame"]
    assert spdy.parse_ping(frames[0]) == 1  # type: ignore[arg-type]
    with pytest.raises(spdy.ProtocolError):
        spdy.parse_ping(spdy.ControlFrame(spdy.PING, 0, b"\x00"))
    with pytest.raises(spdy.ProtocolError):
        spdy.decode_header_block(bytes.fromhex("00000001 00000004") + b"Port" + bytes.fromhex("00000000"))
    with pytest.raises(spdy.ProtocolError):
        list(spdy.FrameParser(max_length=10).feed(spdy.data(1, b"x" * 11)))


def test_a_whole_session_from_hand_built_bytes() -> None:
    """The server against bytes laid out by hand: the upgrade, two SYN_STREAMs whose header blocks are
    stored (uncompressed) deflate blocks, then every frame the server sends back, parsed by hand."""
    import socket
    import urllib.parse

    from tests.streaming_host import exec_url, host_server

    def block(name: bytes, value: bytes) -> bytes:
        return (
            struct.pack(">I", 1) + struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
        )

    with host_server() as (srv, _):
        url = urllib.parse.urlsplit(exec_url(srv, ["printf", "hi"], stderr=False))
        sock = socket.create_connection((url.hostname, url.port), timeout=30)
        sock.sendall(
            f"GET {url.path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n".encode()
        )
        headers_1 = _stored_zlib(0xE3C6A7C2, block(b"streamtype", b"error"), first=True)
        headers_3 = _stored_zlib(0, block(b"streamtype", b"stdout"), first=False)
        for stream_id, compressed in ((1, headers_1), (3, headers_3)):
            payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + compressed
            sock.sendall(bytes.fromhex("80030001") + struct.pack(">I", len(payload)) + payload)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        sock.close()

    head, _, frames = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"X-Stream-Protocol-Version: v4.channel.k8s.io" in head
    seen: list[tuple[str, int, int, bytes]] = []
    inflate = zlib.decompressobj(zdict=CLIENT_DICTIONARY)
    while frames:
        first, second = struct.unpack_from(">II", frames)
        length = second & 0xFFFFFF
        body = frames[8 : 8 + length]
        frames = frames[8 + length :]
        if first & 0x80000000:
            assert first >> 16 == 0x8003
            kind = first & 0xFFFF
            stream = struct.unpack_from(">I", body)[0] & 0x7FFFFFFF
            if kind == 2:
                assert inflate.decompress(body[4:]) == b"\x00\x00\x00\x00"  # no headers
            seen.append((f"control{kind}", stream, second >> 24, b""))
        else:
            seen.append(("data", first, second >> 24, body))
    assert ("control2", 1, 0, b"") in seen and ("control2", 3, 0, b"") in seen  # SYN_REPLY each
    stdout = b"".join(d for k, s, _, d in seen if k == "data" and s == 3)
    assert stdout == b"hi"
    assert any(k == "data" and s == 3 and f & 1 for k, s, f, _ in seen)  # FIN on stdout
    error = b"".join(d for k, s, _, d in seen if k == "data" and s == 1)
    assert error == b'{"metadata":{},"status":"Success"}'
    assert seen[-1][0] == "control7"  # GOAWAY last


def test_header_blocks_are_bounded_in_size_and_count() -> None:
    """A zlib bomb stops at MAX_HEADER_BLOCK decompressed bytes; a block with more pairs or values than
    MAX_HEADERS is refused before they are built; frames past their kind's limit from their header."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    raw = spdy.encode_header_block({"x": ["a" * (32 * 1024 * 1024)]})
    compressed = bomb.compress(raw) + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert len(compressed) < spdy.MAX_CONTROL_IN  # fits in one SYN_STREAM
    with pytest.raises(spdy.ProtocolError, match="larger than"):
        spdy.HeaderDecompressor().decompress(compressed)
    many = struct.pack(">I", spdy.MAX_HEADERS + 1) + b"\0\0\0\1a\0\0\0\0" * (spdy.MAX_HEADERS + 1)
    with pytest.raises(spdy.ProtocolError, match="headers"):
        spdy.decode_header_block(many)
    nul_split = spdy.encode_header_block({"a": [""] * (spdy.MAX_HEADERS + 1)})
    with pytest.raises(spdy.ProtocolError, match="values"):
        spdy.decode_header_block(nul_split)
    assert spdy.decode_header_block(spdy.encode_header_block({"streamtype": ["data"], "port": ["80"]}))
    parser = spdy.FrameParser(spdy.MAX_DATA_IN, spdy.MAX_CONTROL_IN)
    with pytest.raises(spdy.ProtocolError):
        list(parser.feed(spdy.control(spdy.SYN_STREAM, 0, b"\0" * (spdy.MAX_CONTROL_IN + 1))[:8]))
    with pytest.raises(spdy.ProtocolError):
        list(spdy.FrameParser(spdy.MAX_DATA_IN).feed(struct.pack(">II", 1, spdy.MAX_DATA_IN + 1)))
