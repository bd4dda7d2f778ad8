"""Results of one benchmark: the samples, their summary, or the reason there are none.

A benchmark that cannot run (an RPC the endpoint does not implement, a runtime that is not there)
still gets a result with a ``status`` saying why, so every run writes the same set of keys.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any


class Skip(Exception):
    """This benchmark cannot run on this endpoint; the message is shown instead of numbers."""


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: p95 of 20 samples is the 19th smallest, a value that was measured."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Result:
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    status: str = "ok"
    # Whether a larger value is better (throughput) or worse (latency, memory).
    higher_is_better: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.samples)

    def summary(self) -> dict[str, float] | None:
        if not self.ok:
            return None
        return {
            "min": min(self.samples),
            "median": statistics.median(self.samples),
            "p95": percentile(self.samples, 95),
        }

    @property
    def median(self) -> float | None:
        s = self.summary()
        return None if s is None else s["median"]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "unit": self.unit,
            "status": self.status,
            "n": len(self.samples),
            "higher_is_better": self.higher_is_better,
        }
        summary = self.summary()
        for key in ("min", "median", "p95"):
            out[key] = summary[key] if summary else None
        out["samples"] = [round(s, 4) for s in self.samples]
        if self.extra:
            out["extra"] = self.extra
        return out


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms" and value >= 1000:
        value, unit = value / 1000, "s"
    suffix = f" {unit}" if unit else ""
    if abs(value) >= 100:
        return f"{value:.0f}{suffix}"
    if abs(value) >= 10:
        return f"{value:.1f}{suffix}"
    return f"{value:.2f}{suffix}"


def short(result: Result | None) -> str:
    """``median (min..p95)`` or the status."""
    if result is None:
        return "-"
    s = result.summary()
    if s is None:
        status = " ".join(result.status.split())
        return status if len(status) <= 70 else status[:67] + "..."
    if len(result.samples) == 1:
        return fmt(s["median"], result.unit)
    return f"{fmt(s['median'], result.unit)} ({fmt(s['min'], '')}..{fmt(s['p95'], '')})"
