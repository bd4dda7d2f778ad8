"""calyx_base.offload against real asyncio and threads: calls run off the loop (which keeps serving), at
most ``workers`` at once, results and errors reach the caller, and a caller cancelled at any moment loses
nothing: a queued call never runs, a running one's result is discarded on a worker thread, and every
result is either returned or discarded, exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from calyx_base import offload as offload_module
from calyx_base import poll
from calyx_base.offload import Offload


@pytest.fixture
def offload() -> Iterator[Offload]:
    pool = Offload(f"offload-test-{uuid.uuid4().hex[:8]}", 2)
    yield pool
    pool.close()


def test_results_and_errors_reach_the_caller_from_a_worker_thread(offload: Offload) -> None:
    async def main() -> tuple[str, str]:
        name = await offload.run(lambda: threading.current_thread().name)
        with pytest.raises(ValueError, match="bad input"):
            await offload.run(lambda: int("bad input"))
        return name, threading.current_thread().name

    worker, loop_thread = asyncio.run(main())
    assert worker.startswith(offload.name) and worker != loop_thread


def test_the_loop_serves_while_calls_block_and_at_most_workers_run_at_once(offload: Offload) -> None:
    release = threading.Event()
    lock = threading.Lock()
    running = peak = 0

    def blocking() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(30)
        with lock:
            running -= 1

    async def main() -> None:
        calls = [asyncio.create_task(offload.run(blocking)) for _ in range(5)]
        ticks = 0
        while running < 2:  # the loop goes on while both threads are held
            await asyncio.sleep(0.01)
            ticks += 1
        await asyncio.sleep(0.1)
        assert not any(call.done() for call in calls)
        release.set()
        await asyncio.gather(*calls)
        assert ticks > 0

    asyncio.run(main())
    assert peak == 2 and offload.threads == 2


def test_a_cancelled_callers_running_call_is_discarded_on_a_worker_and_a_queued_one_never_runs(
    offload: Offload,
) -> None:
    release = threading.Event()
    started: list[int] = []
    discarded: list[tuple[int, str]] = []

    def call(n: int) -> int:
        started.append(n)
        release.wait(30)
        return n

    def discard(n: int) -> None:
        discarded.append((n, threading.current_thread().name))

    async def main() -> None:
        tasks = [asyncio.create_task(offload.run(functools.partial(call, n), discard)) for n in range(3)]
        while len(started) < 2:
            await asyncio.sleep(0.01)
        for task in tasks:  # two are running, the third is queued
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(task.cancelled() for task in tasks)
        release.set()

    asyncio.run(main())
    assert poll.until(lambda: len(discarded) == 2, 30)
    # The queued call's turn has come and gone once both workers are in later calls at the same time:
    # jobs are taken in order, each finished before the next is taken.
    both = threading.Barrier(2, timeout=60)

    async def later() -> None:
        await asyncio.gather(offload.run(both.wait), offload.run(both.wait))

    asyncio.run(later())
    assert sorted(n for n, _ in discarded) == sorted(started) and 2 not in started
    assert all(name.startswith(offload.name) for _, name in discarded)


def test_every_result_is_returned_or_discarded_exactly_once_whenever_the_caller_is_cancelled() -> None:
    offload = Offload(f"offload-test-{uuid.uuid4().hex[:8]}", 3)
    made: list[object] = []
    returned: list[object] = []
    discarded: list[object] = []
    lock = threading.Lock()

    def make() -> object:
        time.sleep(random.uniform(0, 0.003))
        token = object()
        with lock:
            made.append(token)
        return token

    def discard(token: object) -> None:
        with lock:
            discarded.append(token)

    async def one() -> None:
        task = asyncio.create_task(offload.run(make, discard))
        wait = random.choice([0.0, random.uniform(0, 0.004), None])  # make takes up to 3 ms
        if wait is not None:  # None: the caller waits for its result
            await asyncio.sleep(wait)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            returned.append(await task)

    async def main() -> None:
        for _ in range(100):  # as many callers as workers: each call starts at once
            await asyncio.gather(*(one() for _ in range(3)))

    try:
        asyncio.run(main())
        assert poll.until(lambda: len(returned) + len(discarded) == len(made), 30)
        # a discard queued late (a second one, say) has run once every worker is in a later call at once
        every = threading.Barrier(offload.workers, timeout=60)

        async def later() -> None:
            await asyncio.gather(*(offload.run(every.wait) for _ in range(offload.workers)))

        asyncio.run(later())
        ids = [id(t) for t in returned + discarded]
        assert len(set(ids)) == len(ids) == len(made)
        assert returned and discarded  # both outcomes happened, or the test proved nothing
    finally:
        offload.close()


@pytest.mark.parametrize("cancelled", ["before_delivery", "after_delivery"])
def test_a_result_arriving_as_its_caller_is_cancelled_is_discarded(
    offload: Offload, monkeypatch: pytest.MonkeyPatch, cancelled: str
) -> None:
    """The two narrow windows, forced by holding the loop's thread: the caller is cancelled after the worker
    found it waiting but before the result reached the loop, or after the result was set on its future
    but before the caller woke up. Either way the result goes to ``discard``, on a worker thread."""
    started, release, posted = threading.Event(), threading.Event(), threading.Event()
    discarded: list[str] = []
    post = offload_module._Call._post

    def posting(call: offload_module._Call[str], callback: Callable[[], None]) -> bool:
        ok = post(call, callback)
        posted.set()
        return ok

    monkeypatch.setattr(offload_module._Call, "_post", posting)

    def call() -> str:
        started.set()
        release.wait(30)
        return "result"

    async def main() -> None:
        task = asyncio.create_task(
            offload.run(call, lambda r: discarded.append(threading.current_thread().name))
        )
        while not started.is_set():
            await asyncio.sleep(0.01)
        if cancelled == "before_delivery":
            task.cancel()  # the caller learns of it only once the loop runs again
        release.set()
        assert posted.wait(30)  # the loop's thread held: the delivery is queued, the caller not yet awake
        if cancelled == "after_delivery":
            asyncio.get_running_loop().call_soon(task.cancel)  # runs right after the delivery
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())
    assert poll.until(lambda: bool(discarded), 30)
    assert len(discarded) == 1 and discarded[0].startswith(offload.name)


def test_close_ends_the_threads(offload: Offload) -> None:
    asyncio.run(offload.run(lambda: None))
    threads = [t for t in threading.enumerate() if t.name.startswith(offload.name)]
    assert threads
    offload.close()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
