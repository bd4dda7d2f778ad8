"""The one function that builds the daemon: every subsystem, given its collaborators.

Construction order follows who needs whom; recovery order (``Runtime``) is its own decision: events
first (everyone may publish while recovering), images (containers need them), the cgroup driver, pods,
containers, then the pod removals a crash interrupted (a pod's containers go first), then what
observes the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from calyx_base.cleanups import Cleanups
from cri.config import Config
from cri.containers.records import ContainerRecords
from cri.containers.subsystem import Containers, build_containers
from cri.events import EventBus
from cri.images.manager import ImageManager
from cri.pods.index import PodIndex
from cri.pods.remove import PendingRemovals
from cri.pods.service import PodService
from cri.runtime import PodCidr, Runtime
from cri.stats.collector import RuntimeCollector
from cri.stats.exporter import Exporter
from cri.stats.service import StatsService
from cri.status_events import StatusEvents
from cri.store import Store
from cri.streaming.backend import ContainerBackend
from cri.streaming.server import StreamingServer
from cri.streaming.urls import StreamURLs
from sandbox.apparmor import AppArmor
from sandbox.cgroups import build_driver
from sandbox.network import PodNetworks


@dataclass(frozen=True)
class Daemon:
    """Everything the gRPC services reach, typed."""

    config: Config
    runtime: Runtime
    events: EventBus
    statuses: StatusEvents
    images: ImageManager
    pods: PodService
    containers: Containers
    stream_urls: StreamURLs  # the streaming server (started by the runtime) behind Exec, Attach, PortForward
    stats: StatsService


def build_daemon(config: Config) -> Daemon:
    store = Store(config.root / "calyx.db")
    cleanups = Cleanups(config.state.cleanup_retry_seconds)
    cgroups = build_driver(config.cgroup.driver, config.cgroup.pids_limit, config.cgroup.default_parent)
    events = EventBus()
    pod_index = PodIndex(store, config.root / "pods")
    records = ContainerRecords(store, config.root / "containers")
    statuses = StatusEvents(events, pod_index, records)
    images = ImageManager(store, config.root / "images", config.images, cleanups, users=records)
    containers = build_containers(
        records,
        config.runtime,
        systemd_cgroup=config.cgroup.driver == "systemd",
        run_root=config.run_root,
        pods=pod_index,
        images=images,
        cgroups=cgroups,
        events=statuses,
        cleanups=cleanups,
        apparmor=AppArmor(),
    )
    pod_cidr = PodCidr(store)
    net = config.network
    networks = PodNetworks(
        Path(net.cni_conf_dir),
        net.cni_bin_dirs,
        net.cni_plugin_timeout_seconds,
        net.bridge,
        net.subnet,
        net.subnet_v6,
        leases=store,
        pod_cidr=pod_cidr.get,
    )
    pods = PodService(
        pod_index,
        networks,
        cgroups,
        containers=containers.lifecycle,
        events=statuses,
        cleanups=cleanups,
        handlers=config.runtime,
        run_root=config.run_root,
    )
    backend = ContainerBackend(containers.exits, containers.execs, pod_index)
    streaming = StreamingServer(config.streaming, backend)
    stats = StatsService(containers.exits, pod_index, cgroups, config.metrics)
    exporter = Exporter(RuntimeCollector(stats, pod_index, containers.exits), config.metrics)
    runtime = Runtime(
        store,
        cleanups,
        [
            ("events", events),
            ("images", images),
            ("cgroups", cgroups),
            ("pods", pods),
            ("containers", containers),
            ("pod_removals", PendingRemovals(pods.deps)),
            ("streaming", streaming),
            ("exporter", exporter),
        ],
        networks.readiness,
        pod_cidr,
    )
    stream_urls = StreamURLs(streaming, containers.exits, pod_index)
    return Daemon(config, runtime, events, statuses, images, pods, containers, stream_urls, stats)
