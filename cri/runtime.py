"""The runtime: readiness, the CRI runtime conditions, and the recovery and closing of the subsystems.

The daemon builds it (cri/build.py) with its subsystems in recovery order, runs ``recover()`` (each
subsystem reconciles its store with the machine), then it is ready, whatever recovery could not do:
that is logged, counted and retried (Cleanups).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from calyx_base.cleanups import Cleanups
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


class PodCidr:
    """The pod CIDR kubelet pushes (UpdateRuntimeConfig), kept in the store; the built-in network
    gives pods addresses in it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self) -> str:
        return str(self.store.setting("pod_cidr", ""))

    def set(self, cidr: str) -> None:
        self.store.set_setting("pod_cidr", cidr)


class Runtime:
    def __init__(
        self,
        store: Store,
        cleanups: Cleanups,
        subsystems: Sequence[tuple[str, Subsystem]],
        network_readiness: Callable[[], Readiness],
        pod_cidr: PodCidr,
    ) -> None:
        self.store = store
        # Cleanups that failed (in recovery, garbage collection...), retried until they succeed.
        self.cleanups = cleanups
        self.subsystems = list(subsystems)
        self.network_readiness = network_readiness
        self.pod_cidr = pod_cidr
        self._ready = threading.Event()

    def recover(self) -> None:
        """Recover every subsystem, then be ready. A subsystem whose recovery fails (each handles its
        own leftovers one by one; this is for what none expected) is logged, counted and recovered
        again later: the daemon serves regardless, since a crash loop helps no pod."""
        for name, subsystem in self.subsystems:
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
        for name, subsystem in reversed(self.subsystems):
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
