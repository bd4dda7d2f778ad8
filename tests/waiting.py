"""Waiting in tests for something the system does on its own (a process state, a scrape, a counter).

Not a timed assertion: the limit only bounds a hang; what is asserted is that it happens at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def slowdown() -> float:
    """How much slower than this kind of host the machine is: ``CALYX_TEST_SLOWDOWN`` (e.g. 6 in the
    node lab, where qemu's TCG makes every process 30-70x slower); waits for a daemon scale with it."""
    try:
        return max(1.0, float(os.environ.get("CALYX_TEST_SLOWDOWN", "1")))
    except ValueError:
        return 1.0


def wait_for(check: Callable[[], T], what: str, timeout: float = 60.0, interval: float = 0.05) -> T:
    """Call ``check`` until it returns something truthy and return that; AssertionError naming ``what``
    if it has not after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(interval)
