"""Waiting for the kernel or a helper process to get somewhere (a process gone, a cgroup empty, an exit
file written) where nothing notifies us: one bounded polling loop for all of them."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(done: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Call ``done`` every ``interval`` seconds until it is true (True) or ``timeout`` has passed (False).
    ``done`` is always called at least once, and once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
