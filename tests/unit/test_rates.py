"""usage_nano_cores from successive CPU readings."""

from __future__ import annotations

from metrics.rates import CpuRates

S = 1_000_000_000


def test_rate_is_usage_delta_over_time_delta():
    rates = CpuRates()
    assert rates.update("c", 10 * S, 5 * S) is None  # first reading: no rate yet
    assert rates.update("c", 12 * S, 6 * S) == S // 2  # 1 CPU-second in 2 s: half a core


def test_close_callers_share_a_baseline_and_reset_restarts():
    rates = CpuRates(min_interval_ns=S)
    rates.update("c", 0, 0)
    assert rates.update("c", 2 * S, 2 * S) == S  # baseline moves to t=2
    assert rates.update("c", 2 * S + 1000, 2 * S + 500) == 500 * S // 1000  # over 1 us, base kept
    assert rates.update("c", 4 * S, 3 * S) == S // 2  # still measured from t=2
    assert rates.update("c", 5 * S, 1 * S) is None  # counter went back: cgroup recreated
    rates.forget([])
    assert rates.update("c", 6 * S, 2 * S) is None
