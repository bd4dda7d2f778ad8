"""The streaming protocols against the in-process server with a host backend (protocol checks only).

SPDY is driven by tests/spdy_client.py (written from the spec), WebSocket by the ``websockets``
library's client. Real containers are covered by tests/e2e/test_streaming.py.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from websockets.sync.client import connect

from cri.streaming.session_requests import PortForwardRequest
from tests.spdy_client import SpdyClient
from tests.streaming_host import exec_url, host_server
from tests.waiting import wait_for

V4 = "v4.channel.k8s.io"


@pytest.fixture
def server() -> Iterator:
    with host_server() as (srv, backend):
        yield srv, backend


def spdy_exec(
    url: str, protocol: str | None = V4, types: tuple[str, ...] = ("error", "stdout", "stderr"), **kw
) -> tuple[SpdyClient, dict]:
    client = SpdyClient(url, [protocol] if protocol else [], **kw)
    assert client.status == 101, client.body
    streams = {t: client.open_stream({"streamType": t}) for t in types}
    return client, streams


# --- SPDY exec -----------------------------------------------------------------------------------------


def test_spdy_v4_reports_stdout_stderr_and_the_exit_code_as_status_json(server) -> None:
    srv, _ = server
    client, s = spdy_exec(exec_url(srv, ["sh", "-c", "echo out; echo err >&2; exit 3"]))
    assert client.header("x-stream-protocol-version") == V4
    assert s["stdout"].read_all() == b"out\n"
    assert s["stderr"].read_all() == b"err\n"
    status = json.loads(s["error"].read_all())
    assert status["status"] == "Failure"
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert all(st.replied.is_set() for st in s.values())
    assert client.goaway.wait(10)
    client.close()


def test_spdy_v4_stdin_round_trip_and_success_status(server) -> None:
    srv, _ = server
    url = exec_url(srv, ["cat"], stdin=True, stderr=False)
    client, s = spdy_exec(url, types=("error", "stdin", "stdout"))
    s["stdin"].write(b"hello over spdy\n" * 1000)
    s["stdin"].close()
    assert s["stdout"].read_all() == b"hello over spdy\n" * 1000
    assert json.loads(s["error"].read_all()) == {"metadata": {}, "status": "Success"}
    client.close()


@pytest.mark.parametrize("protocol", ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io", None])
def test_older_spdy_protocols_report_failure_as_text_and_success_as_nothing(server, protocol) -> None:
    srv, _ = server
    client, s = spdy_exec(exec_url(srv, ["sh", "-c", "echo x; exit 2"]), protocol)
    assert client.header("x-stream-protocol-version") == (protocol or "")
    assert s["stdout"].read_all() == b"x\n"
    text = s["error"].read_all().decode()
    assert text.startswith("command terminated with non-zero exit code") and "exit code 2" in text
    client.close()
    client, s = spdy_exec(exec_url(srv, ["true"]), protocol)
    assert s["stdout"].read_all() == b""
    assert s["error"].read_all() == b""
    client.close()


def test_spdy_protocol_negotiation_failure_is_403_and_runs_nothing(server) -> None:
    srv, backend = server
    client = SpdyClient(exec_url(srv, ["true"]), ["v99.channel.k8s.io"])
    assert client.status == 403
    accepted = [v for k, v in client.headers if k == "x-accepted-stream-protocol-versions"]
    assert V4 in accepted
    assert backend.spawned == []


def test_spdy_tty_resize_reaches_the_terminal(server) -> None:
    srv, _ = server
    url = exec_url(srv, ["sh", "-c", "read go; stty size"], tty=True, stdin=True, stderr=False)
    client, s = spdy_exec(url, types=("error", "stdin", "stdout", "resize"))
    s["resize"].write(json.dumps({"Width": 123, "Height": 45}).encode())
    s["stdin"].write(b"go\r")
    out = s["stdout"].read_all()
    assert b"45 123" in out
    assert json.loads(s["error"].read_all())["status"] == "Success"
    client.close()


def test_spdy_flow_control_is_honoured_when_the_client_does_it(server) -> None:
    srv, _ = server
    url = exec_url(srv, ["head", "-c", "3000000", "/dev/zero"], stderr=False)
    client, s = spdy_exec(url, types=("error", "stdout"), window=4096)
    assert s["stdout"].drain_count() == 3_000_000
    assert client.max_frame_seen <= 4096
    assert json.loads(s["error"].read_all())["status"] == "Success"
    client.close()


def test_spdy_without_flow_control_like_spdystream_still_gets_everything(server) -> None:
    srv, _ = server
    url = exec_url(srv, ["head", "-c", "3000000", "/dev/urandom"], stderr=False)
    client, s = spdy_exec(url, types=("error", "stdout"), flow_control=False)
    assert s["stdout"].drain_count() == 3_000_000
    assert json.loads(s["error"].read_all())["status"] == "Success"
    client.close()


def test_spdy_ping_is_echoed(server) -> None:
    srv, _ = server
    client, s = spdy_exec(
        exec_url(srv, ["sh", "-c", "cat >/dev/null"], stdin=True),
        types=("error", "stdin", "stdout", "stderr"),
    )
    client.ping(7)
    assert client.pings.get(timeout=10) == 7
    s["stdin"].close()
    assert json.loads(s["error"].read_all())["status"] == "Success"
    client.close()


# --- tokens --------------------------------------------------------------------------------------------


def test_wrong_used_and_expired_tokens_are_404_and_run_nothing() -> None:
    # The default TTL (a minute): a token is refused here for what was done with it, never for its age,
    # however slow the host is between issuing it and using it.
    with host_server() as (srv, backend):
        url = exec_url(srv, ["true"])
        bad = url.rsplit("/", 1)[0] + "/notatoken"
        assert SpdyClient(bad, [V4]).status == 404
        assert SpdyClient(url.replace("/exec/", "/attach/"), [V4]).status == 404  # other kind: burns it
        assert SpdyClient(url, [V4]).status == 404
        url = exec_url(srv, ["true"])
        client, s = spdy_exec(url)
        assert json.loads(s["error"].read_all())["status"] == "Success"
        client.close()
        assert SpdyClient(url, [V4]).status == 404  # used
        assert len(backend.spawned) == 1
    # A short TTL, only to see a token refused once it is older than that: waiting longer can only age it.
    with host_server(token_ttl_seconds=0.3) as (srv, backend):
        url = exec_url(srv, ["true"])
        time.sleep(0.5)
        assert SpdyClient(url, [V4]).status == 404  # expired
        assert backend.spawned == []


def test_missing_upgrade_is_400() -> None:
    import urllib.error
    import urllib.request

    with host_server() as (srv, _):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(exec_url(srv, ["true"]), timeout=10)
        assert err.value.code == 400


# --- WebSocket exec -------------------------------------------------------------------------------------


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://", 1)


def collect(ws, stop_on_error: bool = True) -> list:
    messages = []
    try:
        while True:
            m = ws.recv(timeout=30)
            messages.append(m)
    except Exception:
        pass
    return messages


def test_websocket_v5_stdin_close_and_exit_code(server) -> None:
    srv, _ = server
    url = exec_url(srv, ["sh", "-c", "cat; echo err >&2; exit 4"], stdin=True)
    with connect(ws_url(url), subprotocols=["v5.channel.k8s.io", V4]) as ws:
        assert ws.subprotocol == "v5.channel.k8s.io"
        ws.send(b"\x00hello\n")
        ws.send(b"\xff\x00")  # v5: close stdin
        messages = collect(ws)
    by_channel: dict[int, bytes] = {}
    for m in messages:
        by_channel[m[0]] = by_channel.get(m[0], b"") + m[1:]
    assert by_channel[1] == b"hello\n"
    assert by_channel[2] == b"err\n"
    status = json.loads(by_channel[3])
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "4"}]


def test_websocket_v4_binary_and_base64(server) -> None:
    srv, _ = server
    url = exec_url(srv, ["sh", "-c", "printf 'a\\000b'; exit 0"], stderr=False)
    with connect(ws_url(url), subprotocols=[V4]) as ws:
        messages = collect(ws)
    assert messages[0] == b"\x01"  # the empty hello on the first writable channel
    assert b"".join(m[1:] for m in messages if m[0] == 1) == b"a\x00b"
    assert json.loads(b"".join(m[1:] for m in messages if m[0] == 3))["status"] == "Success"

    url = exec_url(srv, ["sh", "-c", "printf 'a\\000b'; exit 5"], stderr=False)
    with connect(ws_url(url), subprotocols=["base64.channel.k8s.io"]) as ws:
        messages = collect(ws)
    assert all(isinstance(m, str) for m in messages)
    out = b"".join(base64.b64decode(m[1:]) for m in messages if m[0] == "1")
    assert out == b"a\x00b"
    error = b"".join(base64.b64decode(m[1:]) for m in messages if m[0] == "3").decode()
    assert "exit code 5" in error  # pre-v4 protocols carry the message, not JSON


def test_websocket_unsupported_subprotocol_is_refused(server) -> None:
    srv, backend = server
    from websockets.exceptions import InvalidHandshake

    with pytest.raises(InvalidHandshake):
        connect(ws_url(exec_url(srv, ["true"])), subprotocols=["v99.example"])
    assert backend.spawned == []


# --- disconnects, idle, concurrency ---------------------------------------------------------------------


def test_client_that_goes_away_gets_its_process_killed(server) -> None:
    srv, backend = server
    client, s = spdy_exec(exec_url(srv, ["sh", "-c", "echo ready; exec sleep 1000"]))
    assert s["stdout"].read() == b"ready\n"
    pid = backend.spawned[0].pid
    assert os.path.exists(f"/proc/{pid}")
    client.close()
    wait_for(lambda: backend.spawned[0].returncode is not None, "exec process killed")
    assert not os.path.exists(f"/proc/{pid}")  # killed and reaped


def test_websocket_client_that_goes_away_gets_its_process_killed(server) -> None:
    srv, backend = server
    with connect(ws_url(exec_url(srv, ["sh", "-c", "echo ready; exec sleep 1000"])), subprotocols=[V4]) as ws:
        assert ws.recv(timeout=10) == b"\x01"
        assert ws.recv(timeout=10) == b"\x01ready\n"
        ws.socket.close()  # gone without a close handshake
    wait_for(lambda: backend.spawned[0].returncode is not None, "exec process killed")


def test_idle_sessions_are_closed_and_their_process_killed() -> None:
    with host_server(idle_timeout_seconds=1.0) as (srv, backend):
        client, _s = spdy_exec(exec_url(srv, ["sleep", "1000"]))
        assert client.closed.wait(30)
        assert client.goaway.is_set()
        wait_for(lambda: backend.spawned[0].returncode is not None, "idle exec process killed")


def test_many_concurrent_sessions(server) -> None:
    srv, _ = server

    def one(i: int) -> bytes:
        client, s = spdy_exec(
            exec_url(srv, ["sh", "-c", f"sleep 0.5; echo {i}"]), types=("error", "stdout", "stderr")
        )
        out = s["stdout"].read_all()
        assert json.loads(s["error"].read_all())["status"] == "Success"
        client.close()
        return out

    with ThreadPoolExecutor(40) as pool:
        outputs = list(pool.map(one, range(40)))
    assert outputs == [f"{i}\n".encode() for i in range(40)]


# --- port-forward --------------------------------------------------------------------------------------


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 128  # the parallel test opens 20 connections at once

    httpd = Server(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_spdy_portforward_many_requests_over_one_connection(server, http_port) -> None:
    srv, backend = server
    backend.netns["hostpod"] = None
    client = SpdyClient(srv.url_for("portforward", PortForwardRequest("hostpod")), ["portforward.k8s.io"])
    assert client.status == 101
    for request_id in range(3):
        headers = {"port": str(http_port), "requestID": str(request_id)}
        error = client.open_stream({**headers, "streamType": "error"})
        data = client.open_stream({**headers, "streamType": "data"})
        data.write(f"GET /r{request_id} HTTP/1.0\r\n\r\n".encode())
        data.close()
        reply = data.read_all()
        assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(f"hello from /r{request_id}".encode())
        assert error.read_all() == b""
    # a refused port reports on the error stream
    error = client.open_stream({"port": "1", "requestID": "9", "streamType": "error"})
    data = client.open_stream({"port": "1", "requestID": "9", "streamType": "data"})
    assert b"error forwarding port 1" in error.read_all()
    # a stream without a valid port header is reset
    bad = client.open_stream({"port": "0", "requestID": "10", "streamType": "data"})
    assert bad.read(10) is None and bad.reset_status is not None
    client.close()


def test_websocket_portforward_first_frames_carry_the_port(server, http_port) -> None:
    srv, backend = server
    backend.netns["hostpod"] = None
    url = ws_url(srv.url_for("portforward", PortForwardRequest("hostpod", [http_port])))
    with connect(url, subprotocols=[V4]) as ws:
        port_bytes = struct.pack("<H", http_port)
        first = {ws.recv(timeout=10), ws.recv(timeout=10)}
        assert first == {b"\x00" + port_bytes, b"\x01" + port_bytes}
        ws.send(b"\x00GET /ws HTTP/1.0\r\n\r\n")
        data = b""
        for m in collect(ws):
            if m[0] == 0:
                data += m[1:]
    assert data.startswith(b"HTTP/1.0 200") and data.endswith(b"hello from /ws")


def test_portforward_connects_inside_the_pods_network_namespace(server, short_tmp) -> None:
    srv, backend = server
    pin = short_tmp / "netns"
    pin.touch()
    subprocess.run(["unshare", f"--net={pin}", "true"], check=True)
    try:
        httpd = subprocess.Popen(
            [
                "nsenter",
                f"--net={pin}",
                "sh",
                "-c",
                "ip link set lo up && exec python3 -m http.server --bind 127.0.0.1 18088",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            backend.netns["nspod"] = str(pin)

            def answered() -> bool:
                client = SpdyClient(
                    srv.url_for("portforward", PortForwardRequest("nspod")), ["portforward.k8s.io"]
                )
                h = {"port": "18088", "requestID": "0"}
                client.open_stream({**h, "streamType": "error"})
                data = client.open_stream({**h, "streamType": "data"})
                data.write(b"GET / HTTP/1.0\r\n\r\n")
                data.close()
                reply = data.read_all()
                client.close()
                return reply.startswith(b"HTTP/1.0 200")

            wait_for(answered, "http server in the netns answers through port-forward")
            # and the host's own 18088 is not what answered: nothing listens there
            import socket

            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", 18088), timeout=2)
        finally:
            httpd.kill()
            httpd.wait()
    finally:
        subprocess.run(["umount", str(pin)], check=False)
        pin.unlink()


def test_tls_serves_https_urls(short_tmp) -> None:
    cert, key = short_tmp / "cert.pem", short_tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    with host_server(tls_cert=str(cert), tls_key=str(key)) as (srv, _):
        url = exec_url(srv, ["echo", "over tls"], stderr=False)
        assert url.startswith("https://127.0.0.1:")
        client, s = spdy_exec(url, types=("error", "stdout"))
        assert s["stdout"].read_all() == b"over tls\n"
        assert json.loads(s["error"].read_all())["status"] == "Success"
        client.close()


def test_portforward_to_a_pod_gone_since_the_url_was_issued_is_404(server) -> None:
    srv, _ = server
    client = SpdyClient(srv.url_for("portforward", PortForwardRequest("gonepod")), ["portforward.k8s.io"])
    assert client.status == 404
    assert b"no such pod" in client.body


def test_websocket_idle_sessions_are_closed() -> None:
    from websockets.exceptions import ConnectionClosed

    with host_server(idle_timeout_seconds=1.0) as (srv, backend):
        with connect(ws_url(exec_url(srv, ["sleep", "1000"])), subprotocols=[V4]) as ws:
            assert ws.recv(timeout=10) == b"\x01"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=30)
        wait_for(lambda: backend.spawned[0].returncode is not None, "idle exec process killed")


def test_websocket_base64_portforward(server, http_port) -> None:
    srv, backend = server
    backend.netns["hostpod"] = None
    url = ws_url(srv.url_for("portforward", PortForwardRequest("hostpod", [http_port])))
    with connect(url, subprotocols=["v4.base64.channel.k8s.io"]) as ws:
        port_b64 = base64.b64encode(struct.pack("<H", http_port)).decode()
        assert {ws.recv(timeout=10), ws.recv(timeout=10)} == {"0" + port_b64, "1" + port_b64}
        ws.send("0" + base64.b64encode(b"GET /b64 HTTP/1.0\r\n\r\n").decode())
        data = b"".join(base64.b64decode(m[1:]) for m in collect(ws) if m[0] == "0")
    assert data.startswith(b"HTTP/1.0 200") and data.endswith(b"hello from /b64")


def test_flow_controlled_client_piping_megabytes_through_cat_does_not_deadlock(server) -> None:
    srv, _ = server
    url = exec_url(srv, ["cat"], stdin=True, stderr=False)
    client, s = spdy_exec(url, types=("error", "stdin", "stdout"), window=32768)
    payload = os.urandom(4_000_000)
    writer = threading.Thread(target=lambda: (s["stdin"].write(payload), s["stdin"].close()))
    writer.start()
    received = s["stdout"].read_all(timeout=60)
    writer.join(60)
    assert received == payload
    assert client.window_updates_received > 0  # the server returned the stdin it consumed
    assert json.loads(s["error"].read_all())["status"] == "Success"
    client.close()


def test_spdy_portforward_parallel_connections_over_one_session(server, http_port) -> None:
    srv, backend = server
    backend.netns["hostpod"] = None
    client = SpdyClient(srv.url_for("portforward", PortForwardRequest("hostpod")), ["portforward.k8s.io"])
    pairs = []
    for request_id in range(20):
        headers = {"port": str(http_port), "requestID": str(request_id)}
        error = client.open_stream({**headers, "streamType": "error"})
        data = client.open_stream({**headers, "streamType": "data"})
        pairs.append((request_id, error, data))
    for request_id, _, data in pairs:
        data.write(f"GET /p{request_id} HTTP/1.0\r\n\r\n".encode())
        data.close()
    for request_id, error, data in pairs:
        reply = data.read_all()
        assert reply.endswith(f"hello from /p{request_id}".encode()), (reply, error.read_all())
        assert error.read_all() == b""
    client.close()


def test_ipv6_address_gives_bracketed_urls() -> None:
    with host_server(address="::1") as (srv, _):
        url = exec_url(srv, ["echo", "v6"], stderr=False)
        assert url.startswith("http://[::1]:")
        client, s = spdy_exec(url, types=("error", "stdout"))
        assert s["stdout"].read_all() == b"v6\n"
        client.close()


def test_spdy3_style_client_without_session_window_updates_is_not_stalled(server) -> None:
    srv, _ = server
    url = exec_url(srv, ["head", "-c", "1000000", "/dev/zero"], stderr=False)
    client, s = spdy_exec(url, types=("error", "stdout"), window=8192, session_window_updates=False)
    assert s["stdout"].drain_count() == 1_000_000
    assert client.max_frame_seen <= 8192
    client.close()


def test_sessions_and_rejections_are_counted_for_prometheus(server) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    srv, _ = server
    started = value("calyx_streaming_sessions_total", kind="exec", protocol="spdy/3.1")
    rejected = value("calyx_streaming_rejected_requests_total", reason="token")
    client, s = spdy_exec(
        exec_url(srv, ["sh", "-c", "read x"], stdin=True, stderr=False), types=("error", "stdin", "stdout")
    )
    wait_for(
        lambda: value("calyx_streaming_sessions_active", kind="exec", protocol="spdy/3.1") >= 1, "active"
    )
    s["stdin"].write(b"x\n")
    assert s["error"].read_all()
    client.close()
    assert value("calyx_streaming_sessions_total", kind="exec", protocol="spdy/3.1") == started + 1
    assert SpdyClient(srv.base_url + "/exec/nope", [V4]).status == 404
    assert value("calyx_streaming_rejected_requests_total", reason="token") == rejected + 1
    wait_for(lambda: value("calyx_streaming_sessions_active", kind="exec", protocol="spdy/3.1") == 0, "ended")


def test_a_client_that_never_opens_its_streams_is_dropped_and_nothing_runs() -> None:
    with host_server(stream_creation_timeout_seconds=1.0) as (srv, backend):
        client = SpdyClient(exec_url(srv, ["true"]), [V4])
        client.open_stream({"streamType": "error"})  # stdout and stderr never come
        assert client.closed.wait(30)
        assert backend.spawned == []
