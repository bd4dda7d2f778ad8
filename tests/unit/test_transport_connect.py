"""Connections the pull's transport makes now that it resolves names itself (cri/images/resolver.py):
IP literals and names from /etc/hosts reach a registry on loopback, and TLS still verifies the name the
registry was asked by, not the address it resolved to."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cri.images.transport import DeadlineTransport, tls_context
from tests.hostile_registry import HostileServer, Reply, self_signed


@pytest.fixture
def servers() -> Iterator[Callable[..., HostileServer]]:
    made: list[HostileServer] = []

    def make(address: str = "127.0.0.1", **kw: Any) -> HostileServer:
        server = HostileServer(address, **kw)
        server.routes["/v2/"] = Reply(body=b"{}")
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def get(url: str, context: ssl.SSLContext | None = None) -> int:
    transport = DeadlineTransport(time.monotonic() + 60, context or tls_context())
    with httpx.Client(transport=transport) as client:
        return client.get(url, timeout=30).status_code


def port(server: HostileServer) -> str:
    return server.host.rsplit(":", 1)[1]


def test_ip_literals_and_localhost_reach_a_registry_on_loopback(
    servers: Callable[..., HostileServer],
) -> None:
    v4, v6 = servers("127.0.0.1"), servers("::1")
    assert get(f"http://127.0.0.1:{port(v4)}/v2/") == 200
    assert get(f"http://localhost:{port(v4)}/v2/") == 200
    assert get(f"http://[::1]:{port(v6)}/v2/") == 200
    assert len(v4.requests("/v2/")) == 2 and len(v6.requests("/v2/")) == 1


def test_nothing_listening_is_a_connect_error(servers: Callable[..., HostileServer]) -> None:
    server = servers()
    unused = port(server)
    server.close()
    with pytest.raises(httpx.ConnectError):
        get(f"http://localhost:{unused}/v2/")


def test_tls_verifies_the_name_asked_for_not_the_address_it_resolved_to(
    servers: Callable[..., HostileServer], short_tmp: Path
) -> None:
    good = self_signed(short_tmp, "localhost")
    other = self_signed(short_tmp, "other.invalid-calyx.test")
    context = ssl.create_default_context()
    for cert, _ in (good, other):
        context.load_verify_locations(cafile=str(cert))
    right, wrong = servers(tls=good), servers(tls=other)
    assert get(f"https://localhost:{port(right)}/v2/", context) == 200
    with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
        get(f"https://localhost:{port(wrong)}/v2/", context)
    # By address the certificate for localhost does not match either.
    with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
        get(f"https://127.0.0.1:{port(right)}/v2/", context)
    assert right.requests("/v2/") and not wrong.requests("/v2/")
