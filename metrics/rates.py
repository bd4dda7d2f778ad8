"""CPU usage rate (``usage_nano_cores``) between successive readings of the same container or pod.

CRI asks the runtime for the rate, not only the counter: kubelet's ``kubectl top`` and the autoscalers
use it directly. Several clients sample the same container at their own pace (kubelet, Prometheus,
crictl stats), so the baseline is only moved forward once it is at least ``min_interval_ns`` old: a
second caller arriving a millisecond after the first still gets a rate over a meaningful window.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class CpuRates:
    def __init__(self, min_interval_ns: int = 1_000_000_000) -> None:
        self.min_interval_ns = min_interval_ns
        self._baseline: dict[str, tuple[int, int]] = {}  # key -> (timestamp_ns, usage_ns)
        self._lock = threading.Lock()

    def update(self, key: str, timestamp_ns: int, usage_ns: int) -> int | None:
        """The rate in nano-cores since the baseline of ``key``; None on the first reading (or after the
        counter went backwards: the cgroup was recreated)."""
        with self._lock:
            base = self._baseline.get(key)
            if base is None or usage_ns < base[1] or timestamp_ns < base[0]:
                self._baseline[key] = (timestamp_ns, usage_ns)
                return None
            elapsed = timestamp_ns - base[0]
            if elapsed >= self.min_interval_ns:
                self._baseline[key] = (timestamp_ns, usage_ns)
            if elapsed <= 0:
                return None
            return (usage_ns - base[1]) * 1_000_000_000 // elapsed

    def forget(self, keep: Iterable[str]) -> None:
        """Drop baselines of containers/pods that are gone."""
        alive = set(keep)
        with self._lock:
            for key in [k for k in self._baseline if k not in alive]:
                del self._baseline[key]
