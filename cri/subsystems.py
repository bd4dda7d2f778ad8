"""The subsystems the daemon attaches to its runtime, in start-up (and recovery) order.

Each builder takes the Runtime and calls ``runtime.register(name, subsystem)``. Images come first
(containers need them), then pods, then containers, then what observes them.
"""

from __future__ import annotations

from collections.abc import Callable

from cri.runtime import Runtime

SUBSYSTEM_BUILDERS: list[Callable[[Runtime], None]] = []
