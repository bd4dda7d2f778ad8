"""What a peer sent on one stream or channel, queued for its one reader (SPDY streams, WebSocket channels)."""

from __future__ import annotations

import asyncio
from collections import deque


class Inbox:
    """Chunks in arrival order; ``get`` returns b"" once the peer closed its side and all was read."""

    def __init__(self, closed: bool = False) -> None:
        self._chunks: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self.buffered = 0
        self.closed = closed

    @property
    def empty(self) -> bool:
        return not self._chunks

    def put(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self.buffered += len(data)
        self._readable.set()

    def discard(self) -> int:
        """Drop what is queued (nobody will read it); the number of bytes dropped."""
        dropped, self.buffered = self.buffered, 0
        self._chunks.clear()
        return dropped

    def close(self) -> None:
        self.closed = True
        self._readable.set()

    async def get(self) -> bytes:
        while not self._chunks:
            if self.closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        self.buffered -= len(chunk)
        return chunk
