"""A few daemon threads running jobs from one queue, started as the jobs need them.

Two parts of the daemon hand blocking work to threads of their own instead of Python's pools: the
streaming server's calls into the daemon (calyx_base/offload.py) and registry name lookups
(cri/images/resolver.py). Both need a bound that is theirs (a stuck job holds one of their threads, not
the host's share of a shared pool), threads that never keep the process from exiting (a lookup on a
dead nameserver, a call stuck on a lock), and no thread before the first job.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("calyx_base.workers")

Job = Callable[[], None]


class Workers:
    """At most ``limit`` daemon threads named ``name-N``; a job beyond that waits in the queue."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pending = 0  # jobs queued or running

    @property
    def threads(self) -> int:
        with self._lock:
            return len(self._threads)

    def submit(self, job: Job) -> None:
        """Run ``job`` on a worker thread; one is started while every thread has a job and fewer than
        ``limit`` run. An exception the job lets out is logged, not raised."""
        with self._lock:
            self._pending += 1
            if self._pending > len(self._threads) and len(self._threads) < self.limit:
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._jobs.put(job)

    def close(self) -> None:
        """Idle threads end now, busy ones after their job."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:
                log.exception("a job of the worker threads failed", extra={"workers": self.name})
            finally:
                with self._lock:
                    self._pending -= 1
