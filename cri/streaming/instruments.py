"""Prometheus instruments of the streaming server (served by the exporter with the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SESSIONS_ACTIVE = Gauge(
    "calyx_streaming_sessions_active",
    "Exec, attach and port-forward sessions open now, by kind and upgrade protocol.",
    ["kind", "protocol"],
)
SESSIONS = Counter(
    "calyx_streaming_sessions",
    "Exec, attach and port-forward sessions started, by kind and upgrade protocol.",
    ["kind", "protocol"],
)
REJECTED = Counter(
    "calyx_streaming_rejected_requests",
    "Streaming requests refused before anything ran (unknown, used or expired token; no upgrade; busy: "
    "too many sessions or handshakes).",
    ["reason"],
)
