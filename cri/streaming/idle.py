"""The idle timeout both streaming protocols share: any traffic either way restarts it."""

from __future__ import annotations

import asyncio


class IdleClock:
    """When a connection last carried traffic, and a wait that ends once it has been quiet too long."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.expired = False
        self._last = asyncio.get_running_loop().time()

    def touch(self) -> None:
        self._last = asyncio.get_running_loop().time()

    async def wait_expired(self) -> None:
        """Return once ``timeout`` seconds passed without a ``touch`` (sleeping, not polling)."""
        loop = asyncio.get_running_loop()
        while (remaining := self._last + self.timeout - loop.time()) > 0:
            await asyncio.sleep(remaining)
        self.expired = True
