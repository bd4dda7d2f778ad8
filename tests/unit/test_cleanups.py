"""Failed cleanups are counted, kept and retried; a subsystem whose recovery fails does not keep the
runtime from being ready (the daemon's own tests in tests/e2e/test_recovery_retries.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client import REGISTRY

from calyx_base.cleanups import Cleanups
from cri.runtime import PodCidr, Runtime
from cri.store import Store
from sandbox.network import Readiness


def failures(what: str) -> float:
    return REGISTRY.get_sample_value("calyx_recovery_failures_total", {"what": what}) or 0.0


def pending(what: str) -> float:
    return REGISTRY.get_sample_value("calyx_recovery_pending", {"what": what}) or 0.0


class Flaky:
    """Fails ``times`` times (with ``error``), then succeeds."""

    def __init__(self, times: int, error: Exception) -> None:
        self.left = times
        self.error = error
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise self.error


def test_a_failed_cleanup_is_counted_kept_and_retried_until_it_succeeds() -> None:
    cleanups = Cleanups(retry_seconds=3600)
    before = failures("unit-a")
    flaky = Flaky(2, OSError(16, "Device or resource busy"))
    assert not cleanups.attempt("unit-a", "x1", flaky)
    assert cleanups.pending() == [("unit-a", "x1", "")]
    assert failures("unit-a") == before + 1 and pending("unit-a") == 1
    assert cleanups.retry() == 1  # fails again: counted again, still kept once
    assert failures("unit-a") == before + 2 and pending("unit-a") == 1
    assert cleanups.retry() == 0
    assert flaky.calls == 3 and pending("unit-a") == 0 and cleanups.pending() == []


def test_steps_of_one_object_are_kept_apart_and_a_success_forgets_only_its_own() -> None:
    cleanups = Cleanups(retry_seconds=3600)
    cleanups.attempt("unit-b", "pod1", Flaky(1, OSError("no")), "dir")
    cleanups.attempt("unit-b", "pod1", Flaky(1, OSError("no")), "pin")
    assert cleanups.attempt("unit-b", "pod1", lambda: None, "pin")
    assert cleanups.pending() == [("unit-b", "pod1", "dir")]


def test_the_retry_thread_runs_until_closed() -> None:
    cleanups = Cleanups(retry_seconds=0.05)
    done = threading.Event()
    flaky = Flaky(3, RuntimeError("not yet"))

    def cleanup() -> None:
        flaky()
        done.set()

    cleanups.attempt("unit-c", "x", cleanup)
    cleanups.start()
    try:
        assert done.wait(30)
    finally:
        cleanups.close()
    assert cleanups.pending() == []


def test_a_subsystem_whose_recovery_fails_is_recovered_later_and_the_runtime_is_ready(tmp_path: Path) -> None:
    recovered: list[str] = []

    class Broken:
        """Its first recovery dies as a 5000-deep layer once made every start of Calyx die."""

        def __init__(self) -> None:
            self.flaky = Flaky(1, RecursionError("maximum recursion depth exceeded"))

        def recover(self) -> None:
            self.flaky()
            recovered.append("broken")

        def close(self) -> None:
            pass

    class Fine(Broken):
        def recover(self) -> None:
            recovered.append("fine")

    store = Store(tmp_path / "calyx.db")
    runtime = Runtime(
        store,
        Cleanups(3600),
        [("broken", Broken()), ("fine", Fine())],
        lambda: Readiness(True),
        PodCidr(store),
    )
    before = failures("subsystem")
    try:
        runtime.recover()
        assert runtime.ready and recovered == ["fine"]
        assert failures("subsystem") == before + 1
        assert runtime.cleanups.retry() == 0
        assert recovered == ["fine", "broken"]
    finally:
        runtime.close()
