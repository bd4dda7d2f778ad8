"""A hostile registry for tests: an HTTP server on a loopback address whose every answer the test decides.

Debian's docker-registry refuses to store malformed manifests and always behaves; this server produces
what it cannot: documents breaking the OCI grammar, bodies trickled a byte at a time or hundreds of MiB
long, 401 challenges naming realms on other hosts, redirects to other hosts. Any 127.0.0.x address is
"another host" while traffic stays on loopback. Each server is a thread of the test process, closed by
the test; ``seen`` keeps every request (path and Authorization header) and ``hangups`` the paths whose
client went away while the server was still sending.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from critest.oci import Blob, Image, canonical

PIECE = 64 * 1024


@dataclass
class Reply:
    """One answer. ``size`` sends that many zero bytes instead of ``body`` (for huge bodies, never held
    in memory); ``trickle`` sends the body one byte per that many seconds; ``trickle_headers`` does so
    with a long header before the body; ``close_delimited`` leaves content-length out. With ``auth``
    set, a request whose Authorization header is not exactly it gets 401 with ``challenge`` (a
    WWW-Authenticate value) instead."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    size: int | None = None
    trickle: float = 0.0
    trickle_headers: bool = False
    close_delimited: bool = False  # no content-length: the body ends when the connection does
    auth: str | None = None
    challenge: str = ""


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    authorization: str | None


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class HostileServer:
    """Serves ``routes`` (request path without query -> Reply) on ``address``; 404 for anything else.
    ``tls`` = (cert, key) serves HTTPS; ``tls_trickle`` answers every connection with the start of a TLS
    handshake trickled a byte at a time (no HTTP at all)."""

    def __init__(
        self, address: str = "127.0.0.1", tls: tuple[Path, Path] | None = None, tls_trickle: float = 0.0
    ) -> None:
        self.routes: dict[str, Reply] = {}
        self.seen: list[Seen] = []
        self.hangups: list[str] = []
        self.hung_up = threading.Event()
        self.tls_trickle = tls_trickle
        server_class = _IPv6Server if ":" in address else ThreadingHTTPServer
        self.server = server_class((address, 0), self._handler())
        self.server.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        literal = f"[{address}]" if ":" in address else address
        self.host = f"{literal}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self, part: str = "") -> list[Seen]:
        return [s for s in self.seen if part in s.path]

    def authorizations(self) -> list[str]:
        return [s.authorization for s in self.seen if s.authorization is not None]

    # --- content --------------------------------------------------------------------------------------

    def serve_blob(self, repo: str, blob: Blob, **reply: Any) -> None:
        self.routes[f"/v2/{repo}/blobs/{blob.digest}"] = Reply(body=blob.data, **reply)

    def serve_manifest(self, repo: str, refs: list[str], data: bytes, media: str, **reply: Any) -> None:
        headers = {"content-type": media, **reply.pop("headers", {})}
        for ref in refs:
            self.routes[f"/v2/{repo}/manifests/{ref}"] = Reply(body=data, headers=headers, **reply)

    def serve_image(self, repo: str, tag: str, image: Image, **reply: Any) -> None:
        """``image`` by tag and digest, with its config and layers; ``reply`` options apply to each."""
        self.serve_manifest(
            repo, [tag, image.manifest.digest], image.manifest.data, image.manifest.media_type, **reply
        )
        for blob in image.blobs:
            self.serve_blob(repo, blob, **reply)

    def serve_document(self, repo: str, tag: str, doc: Any, media: str) -> str:
        """A manifest or index as given (any JSON, valid or not) under ``tag`` and its digest."""
        blob = Blob(media, canonical(doc) if isinstance(doc, dict) else doc)
        self.serve_manifest(repo, [tag, blob.digest], blob.data, media)
        return blob.digest

    # --- the HTTP side --------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle(self) -> None:
                if hostile.tls_trickle:
                    self._trickle_handshake()
                    return
                with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                    super().handle()

            def _trickle_handshake(self) -> None:
                # A TLS record header announcing a 16 KiB handshake record, then its bytes one by one.
                record = b"\x16\x03\x03\x40\x00" + b"\x02" + b"\x00" * 16383
                self.request.recv(4096)
                self._send_slowly(record, hostile.tls_trickle, "tls-handshake")

            def _send_slowly(self, data: bytes, delay: float, path: str) -> bool:
                for i in range(len(data)):
                    try:
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                    except OSError:
                        hostile.hangups.append(path)
                        hostile.hung_up.set()
                        return False
                    time.sleep(delay)
                return True

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                self._answer()

            def _answer(self) -> None:
                path = self.path.split("?", 1)[0]
                hostile.seen.append(Seen(self.command, self.path, self.headers.get("authorization")))
                reply = hostile.routes.get(path)
                if reply is None:
                    self._plain(404, b'{"errors":[{"code":"NOT_FOUND"}]}', {})
                    return
                if reply.auth is not None and self.headers.get("authorization") != reply.auth:
                    self._plain(
                        401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"www-authenticate": reply.challenge}
                    )
                    return
                if reply.trickle_headers:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    self._send_slowly(b"x-slow: " + b"a" * 20000, reply.trickle, path)
                    return
                length = reply.size if reply.size is not None else len(reply.body)
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if reply.close_delimited:
                    self.send_header("connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("content-length", str(length))
                self.end_headers()
                if reply.trickle:
                    self._send_slowly(reply.body, reply.trickle, path)
                elif reply.size is not None:
                    self._zeros(reply.size, path)
                else:
                    self.wfile.write(reply.body)

            def _zeros(self, size: int, path: str) -> None:
                piece = b"\0" * PIECE
                sent = 0
                try:
                    while sent < size:
                        n = min(PIECE, size - sent)
                        self.wfile.write(piece[:n])
                        sent += n
                except OSError:
                    hostile.hangups.append(path)
                    hostile.hung_up.set()

            def _plain(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def self_signed(base: Path, address: str) -> tuple[Path, Path]:
    """A certificate (its own CA) for ``address`` (an IP address or a DNS name), and its key."""
    cert, key = base / f"tls-{address}.crt", base / f"tls-{address}.key"
    request = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={address}",
    ]
    try:
        kind = "IP" if ipaddress.ip_address(address) else "DNS"
    except ValueError:
        kind = "DNS"
    subprocess.run(
        [*request, "-addext", f"subjectAltName={kind}:{address}", "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return cert, key
