"""Cleanups that failed, kept and retried until they succeed: nothing left over stops the daemon.

A leftover that cannot be removed now (a mount still inside it, an immutable file, a busy cgroup, a
CNI plugin failing) must not keep Calyx from serving, at start or later. ``attempt`` runs a cleanup;
if it fails, the failure is logged with the id it is about, counted in
``calyx_recovery_failures_total{what}``, and the cleanup is kept: a thread tries every kept cleanup
again every ``state.cleanup_retry_seconds`` until it succeeds (``calyx_recovery_pending{what}`` says
how many wait). A retried cleanup must decide afresh whether its object is still garbage, since the
world moved on meanwhile: each is written for one object that no new work can reuse (an id, a random
temporary name) or re-checks under its subsystem's lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from calyx_base import failpoints
from calyx_base.errors import CalyxError
from calyx_base.instruments import RECOVERY_FAILURES, RECOVERY_PENDING

log = logging.getLogger("calyx_base.cleanups")

Key = tuple[str, str, str]  # what, object id, step


class Cleanups:
    def __init__(self, retry_seconds: float) -> None:
        self.retry_seconds = retry_seconds
        self._pending: dict[Key, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def attempt(self, what: str, object_id: str, cleanup: Callable[[], object], step: str = "") -> bool:
        """Run ``cleanup`` for ``object_id`` (a ``what``: layer, blob, container, pod, network...) now;
        if it fails, report it and keep it for the retries. ``step`` tells apart several cleanups of
        one object. True when it succeeded."""
        try:
            failpoints.hit(f"cleanup.{what}", id=object_id, step=step)  # tests make a kind of cleanup fail
            cleanup()
        except Exception as exc:
            self.defer(what, object_id, cleanup, exc, step)
            return False
        self._forget((what, object_id, step))
        return True

    def defer(
        self, what: str, object_id: str, cleanup: Callable[[], object], exc: Exception, step: str = ""
    ) -> None:
        """A cleanup that just failed with ``exc`` (run by the caller): report it, retry it later."""
        self.report(what, object_id, exc, step)
        with self._lock:
            if (what, object_id, step) not in self._pending:
                RECOVERY_PENDING.labels(what).inc()
            self._pending[(what, object_id, step)] = cleanup  # type: ignore[assignment]

    @staticmethod
    def report(what: str, object_id: str, exc: BaseException, step: str = "") -> None:
        """Log and count a failure that is not retried here (the caller or kubelet tries again)."""
        RECOVERY_FAILURES.labels(what).inc()
        log.warning(
            "cleanup failed",
            extra={"what": what, "id": object_id, "step": step, "error": str(exc) or type(exc).__name__},
            exc_info=not isinstance(exc, OSError | CalyxError),  # a traceback only for the unexpected
        )

    def pending(self) -> list[Key]:
        with self._lock:
            return sorted(self._pending)

    def retry(self) -> int:
        """Try every kept cleanup once; returns how many are still kept."""
        with self._lock:
            due = list(self._pending.items())
        for (what, object_id, step), cleanup in due:
            if self._closing.is_set():
                break
            start = time.monotonic()
            if self.attempt(what, object_id, cleanup, step):
                log.info(
                    "cleanup retried and done",
                    extra={
                        "what": what,
                        "id": object_id,
                        "step": step,
                        "duration_ms": (time.monotonic() - start) * 1000,
                    },
                )
        return len(self.pending())

    def _forget(self, key: Key) -> None:
        with self._lock:
            if self._pending.pop(key, None) is not None:
                RECOVERY_PENDING.labels(key[0]).dec()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cleanup-retries", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closing.wait(self.retry_seconds):
            if not self.pending():
                continue
            try:
                self.retry()
            except Exception:  # a retry must never end the retries
                log.exception("cleanup retries failed")

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(5)
