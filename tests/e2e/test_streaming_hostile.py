"""Hostile streaming clients against a real daemon (issue 13): whoever holds an exec, attach or
port-forward URL speaks SPDY or WebSocket to the root daemon directly, and any local user reaches the
streaming and metrics ports. Each test is such a client, written here byte by byte where the friendly
clients (tests/spdy_client.py, ``websockets``) would refuse to misbehave; each checks that the daemon's
memory, threads and event loop stay bounded and that it still serves everyone else afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import urllib.parse
import zlib

import pytest

from cri.api import api_pb2 as pb
from cri.streaming.server import MAX_HANDSHAKES
from tests.e2e.test_streaming import Env, _env
from tests.net_fixtures import pod_config, run_pod
from tests.spdy_client import (
    DICTIONARY,
    HEADERS,
    SYN_STREAM,
    SpdyClient,
    control_frame,
    data_frame,
    header_block,
)
from tests.streaming_clients import V4, spdy
from tests.waiting import wait_for

MIB = 1024 * 1024


@pytest.fixture
def env(builtin_net, image_registry, short_tmp) -> Env:
    return _env(builtin_net, image_registry, short_tmp)


def daemon_pid(env: Env) -> int:
    assert env.daemon.proc is not None
    return env.daemon.proc.pid


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def still_serves_exec(env: Env, cid: str) -> None:
    """A friendly client gets a whole exec through: the streaming server is alive and answering."""
    client, s = spdy(env.exec_url(cid, ["echo", "still serving"]), ("error", "stdout"))
    assert s["stdout"].read_all() == b"still serving\n"
    assert json.loads(s["error"].read_all())["status"] == "Success"
    client.close()


class RawSpdy:
    """A SPDY/3.1 client that sends whatever it is told: frames of any length, streams of any type."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        self.sock.sendall(
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: Upgrade\r\n"
            f"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {V4}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed during the upgrade: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 "), head
        self.deflate = zlib.compressobj(zdict=DICTIONARY)

    def syn(self, stream_id: int, headers: dict[str, str]) -> None:
        block = self.deflate.compress(header_block(headers)) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(control_frame(SYN_STREAM, 0, struct.pack(">IIBB", stream_id, 0, 0, 0) + block))

    def headers(self, stream_id: int, headers: dict[str, str]) -> None:
        block = self.deflate.compress(header_block(headers)) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(control_frame(HEADERS, 0, struct.pack(">I", stream_id) + block))

    def send(self, frame: bytes) -> bool:
        """False once the daemon has closed the connection."""
        try:
            self.sock.sendall(frame)
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()


def test_spdy_data_for_streams_nobody_reads_is_not_kept(env: Env) -> None:
    """Streams of an unknown type, past the stream cap, or that only carry output: what the client sends
    on them is dropped, so an exec's memory does not grow with it (the unfixed daemon kept every byte:
    ~200 MiB here), and the exec itself carries on."""
    cid = env.container(["sleep", "3600"])
    url = env.exec_url(cid, ["sh", "-c", "read x; echo got $x"], stdin=True)
    client, s = spdy(url, ("error", "stdin", "stdout"), flow_control=False)  # spdystream does none
    before = env.daemon_rss_kib()
    junk = [client.open_stream({"streamType": f"junk{i}"}) for i in range(200)]
    s["stdout"].write(b"o" * MIB)  # a stream the server only writes to
    for stream in junk:
        stream.write(b"j" * MIB)  # in 16 KiB frames, as a well-formed client sends
    s["stdin"].write(b"hello\n")
    assert s["stdout"].read_all() == b"got hello\n"
    assert json.loads(s["error"].read_all())["status"] == "Success"
    grown = env.daemon_rss_kib() - before
    assert grown < 64 * 1024, f"the daemon kept {grown} KiB of input nobody reads"
    assert all(stream.reset_status is not None for stream in junk)  # refused
    client.close()
    still_serves_exec(env, cid)


def test_spdy_frames_past_the_limit_end_the_session_unbuffered(env: Env) -> None:
    """DATA frames of 16 MiB (the largest SPDY can declare), one per junk stream: the session ends at
    the first frame's header instead of buffering ~320 MiB of them."""
    cid = env.container(["sleep", "3600"])
    raw = RawSpdy(env.exec_url(cid, ["sleep", "600"], stderr=True))
    for stream_id, kind in ((1, "error"), (3, "stdout"), (5, "stderr")):
        raw.syn(stream_id, {"streamType": kind})
    before = env.daemon_rss_kib()
    payload = b"x" * 0xFFFFFF
    peak = before
    for i in range(20):
        raw.syn(7 + 2 * i, {"streamType": f"junk{i}"})
        if not raw.send(data_frame(7 + 2 * i, payload)):
            break
        peak = max(peak, env.daemon_rss_kib())
    raw.close()
    assert peak - before < 64 * 1024, f"the daemon buffered {peak - before} KiB of oversized frames"
    still_serves_exec(env, cid)


def test_spdy_headers_frames_do_not_pile_up_on_a_stream(env: Env) -> None:
    """HEADERS frames add headers to an open stream: thousands of them, each a 60 KiB value (a few bytes
    on the wire, the session's zlib context repeats it), are read and not kept (the unfixed daemon added
    them all to the stream: ~180 MiB)."""
    cid = env.container(["sleep", "3600"])
    raw = RawSpdy(env.exec_url(cid, ["sleep", "600"]))
    raw.syn(1, {"streamType": "error"})
    raw.syn(3, {"streamType": "stdout"})
    before = env.daemon_rss_kib()
    value = "v" * (60 * 1024)
    for _ in range(3000):
        raw.headers(3, {"x-pile": value})
    raw.sock.sendall(control_frame(6, 0, struct.pack(">I", 1)))  # a PING: answered once all is read
    reply = b""
    while len(reply) < 12:
        chunk = raw.sock.recv(4096)
        assert chunk, "the daemon closed the session"
        reply += chunk
    grown = env.daemon_rss_kib() - before
    raw.close()
    assert grown < 64 * 1024, f"the daemon kept {grown} KiB of HEADERS"
    still_serves_exec(env, cid)


def test_sessions_past_the_cap_are_503_and_their_url_stays_valid(
    builtin_net, image_registry, short_tmp
) -> None:
    net = builtin_net(
        config={
            "images": {"registries": {image_registry.host: {"insecure": True}}},
            "streaming": {"max_sessions": 2},
        }
    )
    env = Env(
        net.daemon,
        run_pod(net.daemon, pod_config(log_directory=str(short_tmp / "logs"))),
        image_registry.host,
    )
    cid = env.container(["sleep", "3600"])
    held = [spdy(env.exec_url(cid, ["sleep", "600"]), ("error", "stdout"))[0] for _ in range(2)]
    third = env.exec_url(cid, ["echo", "third"])
    refused = SpdyClient(third, [V4])
    assert refused.status == 503, refused.body
    held.pop().close()

    def served() -> bool:
        client = SpdyClient(third, [V4])
        if client.status != 101:
            return False
        stdout = client.open_stream({"streamType": "error"}), client.open_stream({"streamType": "stdout"})
        assert stdout[1].read_all() == b"third\n"
        client.close()
        return True

    wait_for(served, "the refused URL works once a session ended")
    for client in held:
        client.close()


def test_connections_that_never_send_their_request_are_bounded_and_dropped(env: Env) -> None:
    """Slowloris before the upgrade: idle connections past the cap are closed at once, the others after
    the head timeout; meanwhile the daemon keeps serving, and its threads do not grow with them."""
    import resource

    cid = env.container(["sleep", "3600"])
    port = urllib.parse.urlsplit(env.exec_url(cid, ["true"])).port
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    pid = daemon_pid(env)
    before = threads(pid)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(MAX_HANDSHAKES + 50)]
    try:
        for sock in idle[:-50]:
            sock.sendall(b"GET /exec/")  # a request head that never ends
        # The ones past the cap are closed unheard: a whole request gets no answer (not even a 404).
        answers = []
        for sock in idle[-50:]:
            try:
                sock.sendall(b"GET /exec/nope HTTP/1.1\r\nHost: x\r\n\r\n")
                answers.append(sock.recv(100))
            except (ConnectionResetError, BrokenPipeError):
                answers.append(b"")
        assert answers == [b""] * 50
        assert threads(pid) <= before + 4
        # ... and the others at the head timeout, after which the server is all ours again
        for sock in idle[:-50]:
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
        still_serves_exec(env, cid)
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_portforward_streams_whose_pair_never_comes_are_reset(builtin_net, image_registry, short_tmp) -> None:
    """Data streams without their error stream (another requestID each): once the creation timeout
    passes each is reset and what was sent on it dropped (the unfixed daemon kept them, and their
    input, for the session's life), and the session goes on forwarding."""
    net = builtin_net(config={"streaming": {"stream_creation_timeout_seconds": 1.0}})
    pod_id = run_pod(net.daemon, pod_config(log_directory=str(short_tmp / "logs")))
    url = net.daemon.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod_id, port=[1])).url
    client = SpdyClient(url, ["portforward.k8s.io"], flow_control=False)
    assert client.status == 101, client.body
    halves = [
        client.open_stream({"streamType": "data", "port": "1", "requestID": f"half{i}"}) for i in range(20)
    ]
    for stream in halves:
        stream.write(b"h" * (64 * 1024))
    wait_for(lambda: all(s.reset_status is not None for s in halves), "half pairs reset", timeout=30)
    # a whole pair still works: nothing listens on port 1 in the pod, and the error stream says so
    error = client.open_stream({"streamType": "error", "port": "1", "requestID": "whole"})
    client.open_stream({"streamType": "data", "port": "1", "requestID": "whole"})
    assert b"error forwarding port 1" in error.read_all()
    client.close()
