"""Container and pod statistics: one sample per container or pod, read from the cgroup, network-namespace
and writable-layer readers in metrics/, served by the CRI stats RPCs and the Prometheus exporter alike
(StatsService in service.py is the entry)."""
