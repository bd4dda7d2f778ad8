"""A streaming connection before its upgrade: the request head as parsed, and the HTTP error answered
instead of an upgrade."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


class HTTPError(Exception):
    def __init__(self, status: int, reason: str, body: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(body)
        self.status = status
        self.reason = reason
        self.body = body
        self.headers = headers or []


@dataclass
class Head:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    raw: bytes

    def get(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name), "")

    def values(self, name: str) -> list[str]:
        out: list[str] = []
        for k, v in self.headers:
            if k == name:
                out.extend(p.strip() for p in v.split(",") if p.strip())
        return out

    def upgrade(self) -> str:
        if "upgrade" not in (p.lower() for p in self.values("connection")):
            return ""
        return self.get("upgrade").lower()


@dataclass
class Connection:
    """A client connection whose request head has been read: what an upgrade to SPDY or WebSocket needs."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    head: Head
