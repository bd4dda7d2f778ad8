"""The images subsystem's Prometheus instruments: bytes downloaded and time per pull (the exporter
serves them with the rest of the process-wide registry)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

IMAGE_PULL_BYTES = Counter("calyx_image_pull_bytes_total", "Bytes of image blobs downloaded from registries.")
IMAGE_PULL_DURATION = Histogram(
    "calyx_image_pull_duration_seconds",
    "Time to pull an image (every blob fetched, verified and unpacked), by outcome.",
    ["outcome"],
    buckets=_SLOW_BUCKETS,
)
