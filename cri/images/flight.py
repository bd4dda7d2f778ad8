"""Coalescing of identical work: concurrent pulls of one image, or downloads of one blob, share one run.

The first caller of ``do(key, fn)`` runs ``fn``; callers arriving while it runs wait for its result.
A waiter whose leader failed runs ``fn`` itself (the leader may have failed for a reason of its own,
such as its own deadline), so one impatient client cannot fail everybody else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from calyx_base.errors import DeadlineExceeded

T = TypeVar("T")


class Flights(Generic[T]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, Future[T]] = {}
        self.shared = 0  # how many callers got a result they did not compute (for tests and logs)

    def do(self, key: str, fn: Callable[[], T], deadline: float | None = None, what: str = "") -> T:
        """``fn``'s result, computed once for every caller with this ``key`` at the same time; ``what``
        names the work in errors (the key may hold more than a reader needs)."""
        while True:
            with self._lock:
                future = self._running.get(key)
                leader = future is None
                if future is None:
                    future = Future()
                    self._running[key] = future
            if leader:
                return self._lead(key, future, fn)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                result = future.result(timeout)
            except FutureTimeout:
                raise DeadlineExceeded(
                    f"{what or key}: deadline passed while waiting for a pull in progress"
                ) from None
            except Exception:
                continue  # the leader failed: try again, perhaps as the leader
            with self._lock:
                self.shared += 1
            return result

    def _lead(self, key: str, future: Future[T], fn: Callable[[], T]) -> T:
        try:
            result = fn()
        except BaseException as exc:
            with self._lock:
                del self._running[key]
            future.set_exception(exc)
            raise
        with self._lock:
            del self._running[key]
        future.set_result(result)
        return result

    def active(self) -> set[str]:
        with self._lock:
            return set(self._running)
