"""Calyx's own Prometheus instruments that the layers below the daemon feed (the exporter serves them).

Here so that code records with one line and without knowing about the exporter: calyx_base/proc.py
times every runc and CNI plugin call it runs, failed cleanups (calyx_base/cleanups.py) are counted by
what they were about. The gRPC request counter and latency histogram live in cri/server/interceptor.py,
the image pull ones in cri/images/instruments.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from prometheus_client import Counter, Gauge, Histogram

_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

RUNC_DURATION = Histogram(
    "calyx_runc_duration_seconds",
    "Time of OCI runtime calls made by the daemon, by runtime binary and command.",
    ["runtime", "command", "outcome"],
    buckets=_CALL_BUCKETS,
)
CNI_DURATION = Histogram(
    "calyx_cni_duration_seconds",
    "Time of CNI plugin calls, by plugin and CNI command.",
    ["plugin", "command", "outcome"],
    buckets=_CALL_BUCKETS,
)

OCI_RUNTIMES = frozenset({"runc", "crun", "runsc", "youki"})


def _runtime_command(args: Sequence[str]) -> str:
    """The runc subcommand in ``args`` (global flags such as ``--root DIR`` come first)."""
    skip_value = False
    for arg in args[1:]:
        if skip_value:
            skip_value = False
            continue
        if arg.startswith("-"):
            skip_value = "=" not in arg and arg in ("--root", "--log", "--log-format", "--criu")
            continue
        return arg
    return ""


def observe_command(
    args: Sequence[str], env: Mapping[str, str] | None, seconds: float, returncode: int | None
) -> None:
    """Record one finished (or timed-out: returncode None) helper program call if it is runc or CNI."""
    if not args:
        return
    program = os.path.basename(args[0])
    outcome = "ok" if returncode == 0 else ("timeout" if returncode is None else "error")
    cni_command = (env or {}).get("CNI_COMMAND")
    if cni_command:
        CNI_DURATION.labels(program, cni_command, outcome).observe(seconds)
    elif program in OCI_RUNTIMES:
        RUNC_DURATION.labels(program, _runtime_command(args), outcome).observe(seconds)


def observe_runtime(runtime_path: str, command: str, seconds: float, ok: bool) -> None:
    """Record an OCI runtime call made on Calyx's behalf by another program (conmon runs runc create)."""
    RUNC_DURATION.labels(os.path.basename(runtime_path), command, "ok" if ok else "error").observe(seconds)


RECOVERY_FAILURES = Counter(
    "calyx_recovery_failures_total",
    "Cleanups that failed (at start, in garbage collection, or when retried later), by what they were"
    " about: each failure is logged with the id and the cleanup retried until it succeeds.",
    ["what"],
)
RECOVERY_PENDING = Gauge(
    "calyx_recovery_pending",
    "Failed cleanups waiting for their next retry, by what they are about.",
    ["what"],
)
