"""The runtime: the one object that holds Calyx's subsystems and their shared state.

The daemon builds it, runs ``recover()`` (each subsystem reconciles its store with the machine), then
marks it ready, whatever recovery could not do: that is logged, counted and retried (``cleanups``).
gRPC servicers reach every subsystem through it. Subsystems register here as they are built:
``images``, ``pods``, ``containers``, ``streaming``, ``stats``, ``events``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from calyx_base.cleanups import Cleanups
from cri.config import Config
from cri.store import Store
from sandbox.network import Readiness

log = logging.getLogger("cri.runtime")


@dataclass(frozen=True)
class Condition:
    """A runtime condition as CRI's Status reports it."""

    type: str
    status: bool
    reason: str = ""
    message: str = ""


class Subsystem(Protocol):
    """What the runtime asks of each subsystem."""

    def recover(self) -> None:
        """Reconcile stored state with the machine; runs once, before the runtime is ready."""

    def close(self) -> None:
        """Stop background work; running containers are left alone."""


class Runtime:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self._ready = threading.Event()
        self._subsystems: list[tuple[str, Subsystem]] = []
        # Cleanups that failed (in recovery, garbage collection...), retried until they succeed.
        self.cleanups = Cleanups(config.state.cleanup_retry_seconds)
        # Replaced by the networking subsystem; until one exists pods cannot get a network.
        self.network_readiness: Callable[[], Readiness] = lambda: Readiness(
            False, "NetworkPluginNotReady", "calyx has no pod network configured"
        )

    # --- subsystems ---------------------------------------------------------------------------------

    def register(self, name: str, subsystem: Any) -> None:
        """Attach ``subsystem`` as ``runtime.<name>``; it is recovered and closed with the runtime."""
        setattr(self, name, subsystem)
        self._subsystems.append((name, subsystem))

    def recover(self) -> None:
        """Recover every subsystem, then be ready. A subsystem whose recovery fails (each handles its
        own leftovers one by one; this is for what none expected) is logged, counted and recovered
        again later: the daemon serves regardless, since a crash loop helps no pod."""
        for name, subsystem in self._subsystems:
            start = time.monotonic()
            done = self.cleanups.attempt("subsystem", name, subsystem.recover)
            log.info(
                "recovered" if done else "recovery failed; retried later",
                extra={"subsystem": name, "duration_ms": (time.monotonic() - start) * 1000},
            )
        self._ready.set()
        self.cleanups.start()

    def close(self) -> None:
        self.cleanups.close()
        for name, subsystem in reversed(self._subsystems):
            try:
                subsystem.close()
            except Exception:
                log.exception("close failed", extra={"subsystem": name})
        self.store.close()

    # --- readiness ----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def conditions(self) -> list[Condition]:
        runtime = (
            Condition("RuntimeReady", True)
            if self.ready
            else Condition(
                "RuntimeReady", False, "Recovering", "calyx is reconciling its state after a start"
            )
        )
        network = self.network_readiness()
        return [runtime, Condition("NetworkReady", network.ready, network.reason, network.message)]

    # --- settings kubelet pushes --------------------------------------------------------------------

    @property
    def pod_cidr(self) -> str:
        return str(self.store.setting("pod_cidr", ""))

    def set_pod_cidr(self, cidr: str) -> None:
        self.store.set_setting("pod_cidr", cidr)
