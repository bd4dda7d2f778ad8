"""The subsystems the daemon attaches to its runtime, in start-up (and recovery) order.

Each builder takes the Runtime and calls ``runtime.register(name, subsystem)``. Events first, images
(containers need them), then pods, then containers, then what observes them.
"""

from __future__ import annotations

from collections.abc import Callable

from cri import events, images, pods, stats, streaming
from cri.containers.manager import register as register_containers
from cri.runtime import Runtime
from sandbox.cgroups import build_driver


def _cgroups(runtime: Runtime) -> None:
    """The cgroup driver (pods and containers use it, so it comes before them)."""
    c = runtime.config.cgroup
    runtime.register("cgroups", build_driver(c.driver, c.pids_limit, c.default_parent))


# The event bus comes first so that every other subsystem can publish while it recovers.
SUBSYSTEM_BUILDERS: list[Callable[[Runtime], None]] = [
    events.register,
    images.build,
    _cgroups,
    pods.register,
    register_containers,
    pods.register_removals,  # after containers: a pod's interrupted removal removes them first
    streaming.register,
    stats.register,  # keep last: it observes the others
]
