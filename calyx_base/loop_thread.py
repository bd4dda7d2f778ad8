"""A private asyncio event loop on a thread of its own, for a server inside the threaded daemon.

The daemon's HTTP servers (streaming, metrics) are asyncio so that one thread holds any number of
connections, while the rest of the daemon (gRPC workers, monitors) is threads. Each needs the same care
around that thread, kept here once: the server's setup (opening its listening socket) runs on the loop
before ``start`` returns, so a busy port fails the caller's start with its own error and leaves no thread
or descriptor behind; ``stop`` lets the server end its connections on the loop, then ends the thread
within a deadline and closes the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """One event loop served by one daemon thread called ``name`` (as threads and logs show it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, setup: Callable[[], Awaitable[T]]) -> T:
        """Run ``setup()`` on a new loop in a new thread and return its result; the loop then serves until
        ``stop``. When setup raises, the thread has ended and the loop is closed before the error is raised
        here, so a failed start needs no stop."""
        if self._thread is not None:
            raise RuntimeError(f"the {self.name} loop is already running")
        loop = asyncio.new_event_loop()
        started = threading.Event()
        result: list[T] = []
        failure: list[BaseException] = []

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                try:
                    result.append(loop.run_until_complete(setup()))
                except BaseException as exc:
                    failure.append(exc)
                    return
                finally:
                    started.set()
                loop.run_forever()
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

        thread = threading.Thread(target=main, name=self.name, daemon=True)
        thread.start()
        started.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread
        return result[0]

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop from another thread and wait up to ``timeout`` seconds for its result
        (``TimeoutError`` then; the coroutine runs on)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"the {self.name} loop is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, shutdown: Callable[[], Coroutine[Any, Any, object]], timeout: float) -> None:
        """Run ``shutdown()`` on the loop (the server closes its socket and ends its connections), then stop
        the loop and join the thread, which closes the loop. Each step waits up to ``timeout`` seconds; a
        shutdown that fails or is late does not keep the loop from stopping. A no-op when not running."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self.call(shutdown(), timeout)
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None
