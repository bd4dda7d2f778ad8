"""The /metrics HTTP endpoint (prometheus-client's server) on ``metrics.address``:``metrics.port``.

It serves the process-wide registry (gRPC requests and latencies, image pulls, runc and CNI calls,
process metrics) together with the runtime collector (container_* series, pods and containers by state)
of this daemon's runtime.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from cri.stats.collector import RuntimeCollector

log = logging.getLogger("cri.stats")


class Exporter:
    def __init__(self, stats: Any) -> None:
        self.stats = stats
        self.config = stats.runtime.config.metrics
        self.collector = RuntimeCollector(stats)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(REGISTRY)  # a registry is itself a collector of everything in it
        self.registry.register(self.collector)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> None:
        self._server, self._thread = start_http_server(
            self.config.port, addr=self.config.address, registry=self.registry
        )
        self.port = self._server.server_port
        log.info("metrics endpoint", extra={"address": self.config.address, "port": self.port})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
