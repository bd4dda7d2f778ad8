"""Compatibility with the official Kubernetes Python client's WebSocket exec and port-forward code
(kubernetes.stream.ws_client), which parses the exit code out of the error channel's status JSON and
checks the port prefix of port-forward channels."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from kubernetes.client import Configuration
from kubernetes.stream.ws_client import PortForward, WSClient, create_websocket

from cri.streaming.session_requests import PortForwardRequest
from tests.streaming_host import exec_url, host_server


@pytest.fixture
def server() -> Iterator:
    with host_server() as (srv, backend):
        yield srv, backend


@pytest.mark.parametrize("protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io"])
def test_exec_exit_code_and_output_as_the_python_client_reads_them(server, protocol: str) -> None:
    srv, _ = server
    command = (
        ["sh", "-c", "cat; echo err >&2; exit 5"] if protocol.startswith("v5") else ["sh", "-c", "exit 5"]
    )
    url = exec_url(srv, command, stdin=protocol.startswith("v5")).replace("http://", "ws://")
    client = WSClient(
        Configuration(), url, headers={"sec-websocket-protocol": protocol}, capture_all=True, binary=True
    )
    assert client.subprotocol == protocol
    if protocol.startswith("v5"):
        client.write_stdin(b"through the python client\n")
        client.close_channel(0)
    client.run_forever(timeout=60)
    assert client.returncode == 5
    if protocol.startswith("v5"):
        assert client.read_all() == b"through the python client\nerr\n"


def test_success_is_return_code_zero(server) -> None:
    srv, _ = server
    url = exec_url(srv, ["echo", "fine"]).replace("http://", "ws://")
    client = WSClient(Configuration(), url, headers=None, capture_all=True, binary=True)
    client.run_forever(timeout=60)
    assert client.returncode == 0
    assert client.read_all() == b"fine\n"


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello-python-client"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_portforward_with_the_python_client(server) -> None:
    srv, backend = server
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        backend.netns["hostpod"] = None
        url = srv.url_for("portforward", PortForwardRequest("hostpod", [port])).replace("http://", "ws://")
        forward = PortForward(
            create_websocket(Configuration(), url, headers={"sec-websocket-protocol": "v4.channel.k8s.io"}),
            [port],
        )
        sock = forward.socket(port)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"hello-python-client")
        assert forward.error(port) is None
        forward.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
