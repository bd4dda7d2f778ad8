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
import time
import urllib.parse
import zlib

import grpc
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from cri.api import api_pb2 as pb
from cri.streaming.server import MAX_HANDSHAKES
from cri.streaming.ws_session import MAX_MESSAGE
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
from tests.streaming_clients import V4, channel, spdy, ws_messages
from tests.waiting import wait_for

MIB = 1024 * 1024
V5 = "v5.channel.k8s.io"


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
    wait_for(lambda: all(s.reset_status is not None for s in halves), "half pairs reset", timeout=60)
    # a whole pair still works: nothing listens on port 1 in the pod, and the error stream says so
    error = client.open_stream({"streamType": "error", "port": "1", "requestID": "whole"})
    client.open_stream({"streamType": "data", "port": "1", "requestID": "whole"})
    assert b"error forwarding port 1" in error.read_all()
    client.close()


# --- WebSocket -----------------------------------------------------------------------------------------


def ws_url(env: Env, cid: str, cmd: list[str], **kw: bool) -> str:
    return env.exec_url(cid, cmd, **kw).replace("http://", "ws://")


def test_websocket_message_of_many_tiny_fragments_is_reassembled_in_linear_time(env: Env) -> None:
    """200,000 one-byte fragments of one stdin message: reassembled as they come (the unfixed daemon
    re-measured every fragment so far at each one, ~2e10 steps on the event loop every session shares,
    and answered nobody meanwhile); another client is served while they arrive, and the message arrives
    whole."""
    cid = env.container(["sleep", "3600"])
    n = 200_000
    with connect(ws_url(env, cid, ["wc", "-c"], stdin=True), subprotocols=[V5], max_size=None) as ws:
        ws.send(iter([b"\x00"] + [b"a"] * n))
        still_serves_exec(env, cid)
        ws.send(b"\xff\x00")  # v5: stdin is closed
        messages = ws_messages(ws, timeout=120)
    assert channel(messages, 1).strip() == str(n).encode()
    assert json.loads(channel(messages, 3))["status"] == "Success"


def test_websocket_message_past_the_cap_closes_the_session(env: Env) -> None:
    cid = env.container(["sleep", "3600"])
    with connect(ws_url(env, cid, ["cat"], stdin=True), subprotocols=[V5], max_size=None) as ws:
        piece = b"m" * (64 * 1024)
        with contextlib.suppress(ConnectionClosed):
            ws.send(iter([b"\x00"] + [piece] * (MAX_MESSAGE // len(piece) + 1)))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=60)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    still_serves_exec(env, cid)


def test_websocket_data_on_output_channels_is_dropped(env: Env) -> None:
    """Messages on channels the server only writes (stdout, error) or that the exec did not ask for
    (stderr here): dropped, so they neither pile up nor stall the session (the unfixed daemon queued
    them for no reader and stopped reading the socket at 1 MiB: stdin never arrived)."""
    cid = env.container(["sleep", "3600"])
    with connect(ws_url(env, cid, ["sh", "-c", "read x; echo got $x"], stdin=True), subprotocols=[V5]) as ws:
        for number in (1, 2, 3):
            for _ in range(48):
                ws.send(bytes([number]) + b"o" * (32 * 1024))
        ws.send(b"\x00hello\n")
        messages = ws_messages(ws, timeout=60)
    assert channel(messages, 1) == b"got hello\n"
    assert json.loads(channel(messages, 3))["status"] == "Success"


def test_resize_garbage_is_dropped_and_later_sizes_still_apply(env: Env) -> None:
    """Megabytes of text on the resize channel that never parse as a size (a string that never ends),
    out-of-range and non-numeric sizes: dropped without keeping them (the unfixed daemon appended
    all of it to one buffer, parsed it again at every message and never got past it), and a valid
    size sent after them reaches the terminal."""
    cid = env.container(["sleep", "3600"])
    script = (
        "read go; i=0; while [ $i -lt 200 ]; do s=$(stty size); "
        '[ "$s" = "20 50" ] && echo $s && break; i=$((i+1)); sleep 0.05; done'
    )
    url = ws_url(env, cid, ["sh", "-c", script], stdin=True, tty=True)
    before = env.daemon_rss_kib()
    with connect(url, subprotocols=[V5]) as ws:
        ws.send(b'\x04{"Width": "' + b"a" * 1000)
        for _ in range(64):
            ws.send(b"\x04" + b"b" * (32 * 1024))
        for bad in (
            {"Width": 70000, "Height": 20},
            {"Width": "50", "Height": 20},
            {"Width": -1, "Height": 1},
        ):
            ws.send(b"\x04" + json.dumps(bad).encode())
        ws.send(b"\x04" + b"[" * 3000)
        ws.send(b"\x04" + b"x" * 5000)
        ws.send(b"\x04" + json.dumps({"Width": 50, "Height": 20}).encode())
        ws.send(b"\x00go\r")
        messages = ws_messages(ws, timeout=60)
    assert b"20 50" in channel(messages, 1)
    assert json.loads(channel(messages, 3))["status"] == "Success"
    assert env.daemon_rss_kib() - before < 64 * 1024


def test_websocket_pings_from_a_client_that_never_reads_do_not_pile_up_pongs(env: Env) -> None:
    """~100 MB of pings from a client that reads nothing: the daemon stops reading once 1 MiB of pongs
    waits for it, instead of queueing every pong (the unfixed daemon's memory grew with them)."""
    cid = env.container(["sleep", "3600"])
    parts = urllib.parse.urlsplit(ws_url(env, cid, ["sleep", "600"]))
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Protocol: {V5}\r\n\r\n".encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read again
    mask = os.urandom(4)
    ping = bytes([0x89, 0x80 | 125]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"p" * 125))
    batch = ping * 8000  # ~1 MB
    before = env.daemon_rss_kib()
    sock.settimeout(10)
    sent = 0
    try:
        while sent < 100:
            sock.sendall(batch)
            sent += 1
    except TimeoutError:
        pass  # the daemon stopped reading: what this test wants
    grown = env.daemon_rss_kib() - before
    sock.close()
    assert grown < 48 * 1024, f"the daemon queued {grown} KiB of pongs ({sent} MB of pings sent)"
    still_serves_exec(env, cid)


@pytest.mark.parametrize("protocol", ["spdy", "websocket"])
def test_exec_printing_forever_to_a_client_that_never_reads_stays_bounded(env: Env, protocol: str) -> None:
    """``yes`` writes as fast as it can; the client reads nothing. The process is held back by the
    pipe (backpressure through the transport's drain), not buffered in the daemon."""
    cid = env.container(["sleep", "3600"])
    url = env.exec_url(cid, ["yes", "y" * 1000])
    before = env.daemon_rss_kib()
    if protocol == "spdy":
        raw = RawSpdy(url)
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.syn(1, {"streamType": "error"})
        raw.syn(3, {"streamType": "stdout"})
        sock = raw.sock
    else:
        parts = urllib.parse.urlsplit(url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {V5}\r\n\r\n".encode()
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 101 ")
    samples = []
    for _ in range(10):
        time.sleep(1)
        samples.append(env.daemon_rss_kib() - before)
    sock.close()
    assert max(samples) < 32 * 1024, f"daemon RSS grew by {samples} KiB while the client read nothing"
    still_serves_exec(env, cid)


def test_portforward_of_thousands_of_ports_is_refused(builtin_net, short_tmp) -> None:
    """A WebSocket port-forward connects to every port of its request at once: a URL naming 2000 ports
    (in the CRI request or in its query) is refused, not 2000 connections opened by the daemon."""
    net = builtin_net()
    pod_id = run_pod(net.daemon, pod_config(log_directory=str(short_tmp / "logs")))
    with pytest.raises(grpc.RpcError) as err:
        net.daemon.runtime.PortForward(
            pb.PortForwardRequest(pod_sandbox_id=pod_id, port=list(range(1, 2001)))
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    url = net.daemon.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod_id)).url
    query = ",".join(str(p) for p in range(1, 2001))
    with pytest.raises(InvalidStatus) as refused:
        connect(url.replace("http://", "ws://") + f"?port={query}", subprotocols=[V4], open_timeout=30)
    assert refused.value.response.status_code == 400
