"""The /metrics port against hostile local clients (issue 13): any user on the host can connect to it,
and the daemon serving it is root. Idle connections, a request head trickled and never finished, and
bodies the endpoint has no use for must cost no thread and keep no one else from scraping."""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.request

from cri.stats.http_server import MAX_CONNECTIONS
from tests.registry import free_port


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return bytes(response.read())


def test_idle_and_trickling_connections_cost_no_thread_and_do_not_block_scrapes(daemon_factory) -> None:
    port = free_port()
    daemon = daemon_factory({"metrics": {"enabled": True, "address": "127.0.0.1", "port": port}})
    assert daemon.proc is not None
    pid = daemon.proc.pid
    assert b"calyx_" in scrape(port)
    before = threads(pid)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(5 * MAX_CONNECTIONS)]
    try:
        for sock in idle[::2]:
            with contextlib.suppress(OSError):  # pushed out already
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # ... and the head never ends
        # every idle connection was a thread of the unfixed daemon (and stayed one forever)
        assert threads(pid) <= before + 1, f"{threads(pid) - before} more threads in the daemon"
        # a scraper still gets through: it pushes out a connection that never sent its request
        assert b"calyx_" in scrape(port)
        # and the idle ones are closed by the daemon (pushed out, or at the head timeout)
        for sock in idle:
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    assert b"calyx_" in scrape(port)


def test_requests_that_are_not_a_scrape_are_refused(daemon_factory) -> None:
    port = free_port()
    daemon_factory({"metrics": {"enabled": True, "address": "127.0.0.1", "port": port}})
    for request, status in (
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", b"400"),
        (b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"400"),
        (b"\x00\x01garbage\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(request)
            assert sock.recv(100).split(b" ")[1] == status, request[:30]
    # keep-alive: two scrapes on one connection, the second after the first's whole body
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for _ in range(2):
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            head, _, body = head.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(
                next(
                    v
                    for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n"))
                    if k.lower() == b"content-length"
                )
            )
            while len(body) < length:
                body += sock.recv(65536)
            assert b"calyx_" in body
    assert b"calyx_" in scrape(port)
