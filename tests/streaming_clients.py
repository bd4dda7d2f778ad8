"""What the streaming e2e tests do as a client, written once: open an exec's SPDY streams, GET through a
port-forward, and read a WebSocket session to its end by channel."""

from __future__ import annotations

from typing import Any

from tests.spdy_client import ClientStream, SpdyClient

V4 = "v4.channel.k8s.io"


def spdy(
    url: str, types: tuple[str, ...], protocol: str = V4, **kw: Any
) -> tuple[SpdyClient, dict[str, ClientStream]]:
    """Upgrade to ``protocol`` (which must succeed) and open one stream per type, in the order given."""
    client = SpdyClient(url, [protocol], **kw)
    assert client.status == 101, client.body
    return client, {t: client.open_stream({"streamType": t}) for t in types}


def portforward_get(url: str, port: int, path: str = "/index.html") -> bytes:
    """An HTTP/1.0 GET of ``path`` through a port-forward URL over SPDY (as kubectl does): the raw reply."""
    client = SpdyClient(url, ["portforward.k8s.io"])
    h = {"port": str(port), "requestID": "0"}
    client.open_stream({**h, "streamType": "error"})
    data = client.open_stream({**h, "streamType": "data"})
    data.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    data.close()
    reply = data.read_all()
    client.close()
    return reply


def ws_messages(ws: Any, timeout: float = 30) -> list[Any]:
    """Every message until the server ends the session (or sends nothing for ``timeout`` seconds)."""
    messages = []
    try:
        while True:
            messages.append(ws.recv(timeout=timeout))
    except Exception:
        pass
    return messages


def channel(messages: list[Any], number: int) -> bytes:
    """What a channel protocol session carried on channel ``number`` (the first byte of each message)."""
    return b"".join(m[1:] for m in messages if m[0] == number)
