"""A SPDY/3.1 client for the tests, written from the spec and sharing no code with cri/streaming.

It plays kubectl's part: upgrades with ``X-Stream-Protocol-Version``, opens one stream per channel
(SYN_STREAM with a ``streamType`` header), writes stdin, reads stdout/stderr/error until FIN, and
(unless told not to) does SPDY/3.1 flow control: a SETTINGS frame first and WINDOW_UPDATE for what it
has read. ``flow_control=False`` behaves like Kubernetes' spdystream, which never does either.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import struct
import threading
import urllib.parse
import zlib

# The SPDY/3 header dictionary (the spec's constant), as hex.
DICTIONARY = bytes.fromhex(
    "".join(
        [
            "000000076f7074696f6e73000000046865616400000004706f7374000000037075740000000664656c65746500000005",
            "7472616365000000066163636570740000000e6163636570742d636861727365740000000f6163636570742d656e636f",
            "64696e670000000f6163636570742d6c616e67756167650000000d6163636570742d72616e6765730000000361676500",
            "000005616c6c6f770000000d617574686f72697a6174696f6e0000000d63616368652d636f6e74726f6c0000000a636f",
            "6e6e656374696f6e0000000c636f6e74656e742d6261736500000010636f6e74656e742d656e636f64696e6700000010",
            "636f6e74656e742d6c616e67756167650000000e636f6e74656e742d6c656e67746800000010636f6e74656e742d6c6f",
            "636174696f6e0000000b636f6e74656e742d6d64350000000d636f6e74656e742d72616e67650000000c636f6e74656e",
            "742d74797065000000046461746500000004657461670000000665787065637400000007657870697265730000000466",
            "726f6d00000004686f73740000000869662d6d617463680000001169662d6d6f6469666965642d73696e63650000000d",
            "69662d6e6f6e652d6d617463680000000869662d72616e67650000001369662d756e6d6f6469666965642d73696e6365",
            "0000000d6c6173742d6d6f646966696564000000086c6f636174696f6e0000000c6d61782d666f727761726473000000",
            "06707261676d610000001270726f78792d61757468656e7469636174650000001370726f78792d617574686f72697a61",
            "74696f6e0000000572616e676500000007726566657265720000000b72657472792d6166746572000000067365727665",
            "7200000002746500000007747261696c6572000000117472616e736665722d656e636f64696e67000000077570677261",
            "64650000000a757365722d6167656e74000000047661727900000003766961000000077761726e696e67000000107777",
            "772d61757468656e746963617465000000066d6574686f64000000036765740000000673746174757300000006323030",
            "204f4b0000000776657273696f6e00000008485454502f312e310000000375726c000000067075626c69630000000a73",
            "65742d636f6f6b69650000000a6b6565702d616c697665000000066f726967696e313030313031323031323032323035",
            "323036333030333032333033333034333035333036333037343032343035343036343037343038343039343130343131",
            "343132343133343134343135343136343137353032353034353035323033204e6f6e2d417574686f7269746174697665",
            "20496e666f726d6174696f6e323034204e6f20436f6e74656e74333031204d6f766564205065726d616e656e746c7934",
            "303020426164205265717565737434303120556e617574686f72697a656434303320466f7262696464656e343034204e",
            "6f7420466f756e6435303020496e7465726e616c20536572766572204572726f72353031204e6f7420496d706c656d65",
            "6e746564353033205365727669636520556e617661696c61626c654a616e20466562204d617220417072204d6179204a",
            "756e204a756c204175672053657074204f6374204e6f76204465632030303a30303a3030204d6f6e2c205475652c2057",
            "65642c205468752c204672692c205361742c2053756e2c20474d546368756e6b65642c746578742f68746d6c2c696d61",
            "67652f706e672c696d6167652f6a70672c696d6167652f6769662c6170706c69636174696f6e2f786d6c2c6170706c69",
            "636174696f6e2f7868746d6c2b786d6c2c746578742f706c61696e2c746578742f6a6176617363726970742c7075626c",
            "6963707269766174656d61782d6167653d677a69702c6465666c6174652c73646368636861727365743d7574662d3863",
            "6861727365743d69736f2d383835392d312c7574662d2c2a2c656e713d302e",
        ]
    )
)

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9


def control_frame(kind: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0x8003, kind) + struct.pack(">I", flags << 24 | len(payload)) + payload


def data_frame(stream_id: int, payload: bytes, fin: bool = False) -> bytes:
    return struct.pack(">II", stream_id, (1 if fin else 0) << 24 | len(payload)) + payload


def header_block(headers: dict[str, str]) -> bytes:
    out = struct.pack(">I", len(headers))
    for name, value in headers.items():
        n, v = name.lower().encode(), value.encode()
        out += struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v
    return out


def parse_header_block(block: bytes) -> dict[str, str]:
    (count,) = struct.unpack_from(">I", block)
    pos, out = 4, {}
    for _ in range(count):
        (n,) = struct.unpack_from(">I", block, pos)
        name = block[pos + 4 : pos + 4 + n].decode()
        pos += 4 + n
        (n,) = struct.unpack_from(">I", block, pos)
        out[name] = block[pos + 4 : pos + 4 + n].decode()
        pos += 4 + n
    assert pos == len(block), "trailing bytes in header block"
    return out


class ClientStream:
    def __init__(self, client: SpdyClient, stream_id: int) -> None:
        self.client = client
        self.id = stream_id
        self.replied = threading.Event()
        self.reply_headers: dict[str, str] = {}
        self.chunks: queue.Queue[bytes | None] = queue.Queue()
        self.reset_status: int | None = None
        self.received = 0
        self.send_window = 65536

    def write(self, data: bytes) -> None:
        """Send, honouring the server's windows when this client does flow control."""
        view = memoryview(data)
        while view:
            n = self.client.reserve(self, min(len(view), 16384))
            self.client.send(data_frame(self.id, bytes(view[:n])))
            view = view[n:]

    def close(self) -> None:
        self.client.send(data_frame(self.id, b"", fin=True))

    def read(self, timeout: float = 30.0) -> bytes | None:
        """The next chunk, or None at FIN/reset/connection end."""
        return self.chunks.get(timeout=timeout)

    def read_all(self, timeout: float = 60.0) -> bytes:
        out = bytearray()
        while (chunk := self.read(timeout)) is not None:
            out += chunk
        return bytes(out)

    def drain_count(self, timeout: float = 120.0) -> int:
        """Read to the end counting bytes without keeping them."""
        total = 0
        while (chunk := self.read(timeout)) is not None:
            total += len(chunk)
        return total


class SpdyClient:
    def __init__(
        self,
        url: str,
        protocols: list[str] | None = None,
        flow_control: bool = True,
        window: int = 65536,
        extra_headers: dict[str, str] | None = None,
        session_window_updates: bool = True,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        if parts.scheme == "https":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock)
        self.sock = sock
        lines = [
            f"POST {parts.path} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Connection: Upgrade",
            "Upgrade: SPDY/3.1",
        ]
        lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols or []]
        lines += [f"{k}: {v}" for k, v in (extra_headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1]) if status_line else 0
        self.headers: list[tuple[str, str]] = []
        for line in header_lines:
            k, _, v = line.partition(":")
            self.headers.append((k.strip().lower(), v.strip()))
        self.body = rest
        self.flow_control = flow_control
        self.session_window_updates = session_window_updates  # False: SPDY/3 (per-stream windows only)
        self.window = window
        self.lock = threading.Lock()
        self.deflate = zlib.compressobj(zdict=DICTIONARY)
        self.inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.streams: dict[int, ClientStream] = {}
        self.next_id = 1
        self.goaway = threading.Event()
        self.closed = threading.Event()
        self.pings: queue.Queue[int] = queue.Queue()
        self.window_updates_received = 0
        self.session_window = 65536
        self.windows = threading.Condition()
        self.max_frame_seen = 0
        if self.status == 101:
            if flow_control:
                self.send(control_frame(SETTINGS, 0, struct.pack(">III", 1, 7, window)))
            self.reader = threading.Thread(target=self._read_loop, args=(rest,), daemon=True)
            self.reader.start()
        else:
            while chunk := sock.recv(4096):
                self.body += chunk
            sock.close()

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name.lower()), "")

    def send(self, frame: bytes) -> None:
        with self.lock:
            self.sock.sendall(frame)

    def open_stream(self, headers: dict[str, str], fin: bool = False) -> ClientStream:
        with self.lock:
            stream_id = self.next_id
            self.next_id += 2
            stream = self.streams[stream_id] = ClientStream(self, stream_id)
            block = self.deflate.compress(header_block(headers)) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
            payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + block
            self.sock.sendall(control_frame(SYN_STREAM, 1 if fin else 0, payload))
        return stream

    def reserve(self, stream: ClientStream, wanted: int, timeout: float = 60.0) -> int:
        if not self.flow_control:
            return wanted
        with self.windows:
            ok = self.windows.wait_for(
                lambda: self.closed.is_set() or min(stream.send_window, self.session_window) > 0, timeout
            )
            assert ok, "the server never opened its window"
            n = max(1, min(wanted, stream.send_window, self.session_window))
            stream.send_window -= n
            self.session_window -= n
            return n

    def ping(self, ping_id: int = 1) -> None:
        self.send(control_frame(PING, 0, struct.pack(">I", ping_id)))

    def close(self) -> None:
        """Hang up without ceremony, as a client that goes away does."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _read_loop(self, pending: bytes) -> None:
        buf = bytearray(pending)
        try:
            while True:
                while len(buf) >= 8:
                    first, second = struct.unpack_from(">II", buf)
                    length = second & 0xFFFFFF
                    if len(buf) < 8 + length:
                        break
                    payload = bytes(buf[8 : 8 + length])
                    del buf[: 8 + length]
                    self.max_frame_seen = max(self.max_frame_seen, length)
                    self._frame(first, second >> 24, payload)
                chunk = self.sock.recv(256 * 1024)
                if not chunk:
                    break
                buf += chunk
        except OSError:
            pass
        finally:
            self.closed.set()
            for stream in list(self.streams.values()):
                stream.chunks.put(None)

    def _frame(self, first: int, flags: int, payload: bytes) -> None:
        if not first & 0x80000000:
            stream = self.streams.get(first & 0x7FFFFFFF)
            if stream is None:
                return
            if payload:
                stream.received += len(payload)
                stream.chunks.put(payload)
                if self.flow_control:
                    frames = control_frame(WINDOW_UPDATE, 0, struct.pack(">II", stream.id, len(payload)))
                    if self.session_window_updates:
                        frames += control_frame(WINDOW_UPDATE, 0, struct.pack(">II", 0, len(payload)))
                    self.send(frames)
            if flags & 1:
                stream.chunks.put(None)
            return
        assert (first >> 16) & 0x7FFF == 3, "server must speak SPDY version 3"
        kind = first & 0xFFFF
        if kind == SYN_REPLY:
            (sid,) = struct.unpack_from(">I", payload)
            stream = self.streams[sid & 0x7FFFFFFF]
            stream.reply_headers = parse_header_block(self.inflate.decompress(payload[4:]))
            stream.replied.set()
            if flags & 1:
                stream.chunks.put(None)
        elif kind == RST_STREAM:
            sid, status = struct.unpack(">II", payload)
            stream = self.streams.get(sid & 0x7FFFFFFF)
            if stream is not None:
                stream.reset_status = status
                stream.chunks.put(None)
        elif kind == GOAWAY:
            self.goaway.set()
        elif kind == PING:
            self.pings.put(struct.unpack(">I", payload)[0])
        elif kind == WINDOW_UPDATE:
            self.window_updates_received += 1
            sid, delta = struct.unpack(">II", payload)
            with self.windows:
                if sid == 0:
                    self.session_window += delta
                elif sid in self.streams:
                    self.streams[sid].send_window += delta
                self.windows.notify_all()
