"""Single-use streaming tokens: the CRI call stores the request, the URL carries a random token.

The gRPC threads insert and the streaming server's event loop consumes, so the cache is locked. A
token is removed when it is consumed, whatever happens next, and is worth nothing after its TTL.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from calyx_base.errors import ResourceExhausted

MAX_PENDING = 1000  # as kubelet's cache: past this many unused URLs, new requests are refused


@dataclass(frozen=True)
class Pending:
    kind: str  # "exec", "attach" or "portforward"
    request: Any
    expires: float


class TokenCache:
    def __init__(self, ttl_seconds: float, clock: Any = time.monotonic) -> None:
        self.ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}

    def insert(self, kind: str, request: Any) -> str:
        now = self._clock()
        with self._lock:
            for token in [t for t, p in self._pending.items() if p.expires <= now]:
                del self._pending[token]
            if len(self._pending) >= MAX_PENDING:
                raise ResourceExhausted(f"{MAX_PENDING} streaming requests are waiting to be used")
            token = secrets.token_urlsafe(24)
            self._pending[token] = Pending(kind, request, now + self.ttl)
            return token

    def consume(self, kind: str, token: str) -> Any | None:
        """The stored request, or None for an unknown, used, expired or other-kind token."""
        with self._lock:
            pending = self._pending.pop(token, None)
        if pending is None or pending.kind != kind or pending.expires <= self._clock():
            return None
        return pending.request

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)
