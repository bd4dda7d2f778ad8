"""Blocking calls made from an event loop, run on a few threads of their own.

One asyncio loop serves every connection of a server, so a call that blocks it (a fork and exec, a lock
another thread holds for seconds, a slow disk) stalls every other client: no new handshakes, no bytes
forwarded. ``Offload.run`` runs such a call on one of at most ``workers`` threads and awaits it; calls
beyond that wait in a queue. This is asyncio's ``to_thread`` with three differences a daemon needs: the
bound is the caller's, not the host's CPU count, and the pool is the caller's alone (nothing else that
uses the loop's default executor waits behind a stuck call); the threads are daemon threads, so a call
stuck on a lock never keeps the process from exiting; and a caller that stops waiting (its task
cancelled: the client left, the server stops) loses nothing. A call still queued then never runs, and
the result of one already running is handed to the caller's ``discard`` on a worker thread (an exec
process is killed and reaped there), never on the loop and never dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from calyx_base.workers import Job, Workers

log = logging.getLogger("calyx_base.offload")

T = TypeVar("T")


class _Call(Generic[T]):
    """One call and the future its caller awaits on the loop."""

    def __init__(
        self, fn: Callable[[], T], discard: Callable[[T], None] | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.fn = fn
        self.discard = discard
        self.loop = loop
        self.outcome: asyncio.Future[T] = loop.create_future()
        self.lock = threading.Lock()
        self.abandoned = False  # the caller stopped waiting: what the call makes is discarded

    def abandon(self, hand_over: Callable[[Job], None]) -> None:
        """The caller was cancelled (on the loop). A result already delivered is discarded here."""
        with self.lock:
            self.abandoned = True
        outcome = self.outcome
        if outcome.done() and not outcome.cancelled() and outcome.exception() is None:
            result = outcome.result()  # set just before the cancellation reached the caller
            hand_over(lambda: self.throw_away(result))

    def execute(self, hand_over: Callable[[Job], None]) -> None:
        """On a worker thread: run the call unless abandoned, then deliver or discard its outcome."""
        with self.lock:
            if self.abandoned:
                return
        try:
            result = self.fn()
        except BaseException as exc:  # delivered to the caller, who raises it
            self._post(functools.partial(self._fail, exc))
            return
        with self.lock:
            keep = not self.abandoned
        if not (keep and self._post(lambda: self._deliver(result, hand_over))):
            self.throw_away(result)

    def _post(self, callback: Callable[[], None]) -> bool:
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: nobody will take it
            return False
        return True

    def _fail(self, exc: BaseException) -> None:
        if not self.outcome.done():
            self.outcome.set_exception(exc)

    def _deliver(self, result: T, hand_over: Callable[[Job], None]) -> None:
        if self.outcome.cancelled():  # the caller was cancelled after the call ended
            hand_over(lambda: self.throw_away(result))
        else:
            self.outcome.set_result(result)

    def throw_away(self, result: T) -> None:
        if self.discard is None:
            return
        try:
            self.discard(result)
        except Exception:
            log.exception("cannot discard the result of an abandoned call")


class Offload:
    """Blocking calls for one event loop on at most ``workers`` daemon threads named ``name-N``
    (calyx_base/workers.py); threads start as calls need them."""

    def __init__(self, name: str, workers: int) -> None:
        self.name = name
        self.workers = workers
        self._pool = Workers(name, workers)

    @property
    def threads(self) -> int:
        return self._pool.threads

    async def run(self, fn: Callable[[], T], discard: Callable[[T], None] | None = None) -> T:
        """``fn()`` on a worker thread; its result, or its exception raised here. When the caller is
        cancelled meanwhile, ``discard(result)`` runs on a worker thread once ``fn`` has returned."""
        call = _Call(fn, discard, asyncio.get_running_loop())
        self._pool.submit(lambda: call.execute(self._pool.submit))
        try:
            return await call.outcome
        except asyncio.CancelledError:
            call.abandon(self._pool.submit)
            raise

    def close(self) -> None:
        """Idle threads end now, busy ones after their call (whose caller has gone: it is discarded)."""
        self._pool.close()
