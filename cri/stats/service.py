"""The stats subsystem: take samples of containers and pods from the kernel, once per request.

Containers and pods come from their subsystems (ContainerSource, PodSource), cgroup locations from the
cgroup driver. A container is sampled from its cgroup only while it runs (an exited container's cgroup
is gone), its writable layer through a short-lived cache (a walk costs time per file), and a pod from
its parent cgroup (kubelet always gives one; without one the pod's readings are the sum of its
containers') and its network namespace. The Prometheus exporter (exporter.py) renders these samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from calyx_base.errors import NotFound
from cri.config import MetricsConfig
from cri.containers.model import CREATED, RUNNING, Container
from cri.pods.model import READY, Pod
from cri.stats.aggregate import sum_samples
from cri.stats.model import ContainerSample, PodSample, PromLabels
from cri.stats.sources import ContainerSource, PodSource
from metrics.cgroup import read_cgroup
from metrics.fsusage import FsUsageCache
from metrics.netdev import read_via_pids
from metrics.network import read_netns
from metrics.rates import CpuRates
from metrics.readings import CgroupSample, NetworkSample
from sandbox.cgroups import CgroupDriver

log = logging.getLogger("cri.stats")

SAMPLED_STATES = (RUNNING, CREATED)  # states whose cgroup exists (CREATED: runc's init waits in it)


class StatsService:
    def __init__(
        self, containers: ContainerSource, pods: PodSource, cgroups: CgroupDriver, config: MetricsConfig
    ) -> None:
        self.container_source = containers
        self.pod_source = pods
        self.cgroups = cgroups
        self.config = config
        self.rates = CpuRates()
        self.fs_cache = FsUsageCache(config.fs_usage_cache_seconds)
        # (container id or "pod:<id>", cgroup parent) -> (controller -> dir, cgroup path)
        self._cgroup_dirs: dict[tuple[str, str], tuple[dict[str, Path], str]] = {}

    # --- lookups ------------------------------------------------------------------------------------

    def _pod_of(self, pod_id: str) -> Pod | None:
        try:
            return self.pod_source.get(pod_id)
        except NotFound:
            return None

    # --- containers ---------------------------------------------------------------------------------

    def container(self, container_id: str) -> ContainerSample:
        """A sample of one container (id or unique prefix); NotFound."""
        c = self.container_source.get(container_id)
        return self._sample_container(c, self._pod_of(c.pod_id))

    def containers(
        self, id: str = "", pod_id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[ContainerSample]:
        """Samples of every container matching the filter (CRI ContainerStatsFilter semantics)."""
        if id:
            try:
                items = [self.container_source.get(id)]
            except NotFound:
                return []
        else:
            items = self.container_source.list()
        pod_cache: dict[str, Pod | None] = {}
        if pod_id:
            pod = self._pod_of(pod_id)
            if pod is None:
                return []
            items = [c for c in items if c.pod_id == pod.id]
        if labels:
            items = [c for c in items if all(c.labels.get(k) == v for k, v in labels.items())]
        samples = []
        for c in sorted(items, key=lambda c: c.created_at):
            if c.pod_id not in pod_cache:
                pod_cache[c.pod_id] = self._pod_of(c.pod_id)
            samples.append(self._sample_container(c, pod_cache[c.pod_id]))
        return samples

    def _container_cgroup(self, c: Container) -> tuple[dict[str, Path], str]:
        """(controller -> dir, cgroup path) of container ``c``; fixed for its life, so computed once."""
        key = (c.id, c.cgroup_parent)
        known = self._cgroup_dirs.get(key)
        if known is None:
            known = self._cgroup_dirs[key] = self.cgroups.stat_dirs(c.id, c.cgroup_parent)
        return known

    def _sample_container(self, c: Container, pod: Pod | None) -> ContainerSample:
        cgroup: CgroupSample | None = None
        cgroup_path = ""
        rate = None
        if c.state in SAMPLED_STATES:
            try:
                dirs, cgroup_path = self._container_cgroup(c)
                cgroup = read_cgroup(dirs)
            except Exception as exc:  # one unreadable container must not fail a whole listing
                log.warning("cgroup unreadable", extra={"container_id": c.id, "error": repr(exc)})
            if cgroup is not None and cgroup.cpu is None and cgroup.memory is None:
                cgroup = None  # the container exited between the state check and the read
            if cgroup is not None and cgroup.cpu is not None:
                rate = self.rates.update(c.id, cgroup.timestamp_ns, cgroup.cpu.usage_ns)
        upper = Path(c.dir) / "upper"
        fs = None
        with contextlib.suppress(OSError):  # not made yet, or removed meanwhile
            fs = self.fs_cache.get(str(upper))
        prom = PromLabels(
            container=c.name,
            pod=pod.metadata.name if pod is not None else "",
            namespace=pod.metadata.namespace if pod is not None else "",
            id=cgroup_path,
            # cAdvisor shows the image as named by the user; kubelet passes that apart from the id.
            image=c.user_specified_image or c.image,
            name=c.id,
        )
        return ContainerSample(
            id=c.id,
            pod_id=c.pod_id,
            name=c.name,
            attempt=c.attempt,
            state=c.state,
            labels=dict(c.labels),
            annotations=dict(c.annotations),
            created_at_ns=c.created_at,
            started_at_ns=c.started_at,
            prom=prom,
            cgroup=cgroup,
            fs=fs,
            fs_mountpoint=_mountpoint(str(upper.parent.parent)),
            cpu_nano_cores=rate,
            pid=c.pid if cgroup is not None else 0,
        )

    # --- pods ---------------------------------------------------------------------------------------

    def pod(self, pod_id: str) -> PodSample:
        pod = self.pod_source.get(pod_id)
        return self._sample_pod(pod, self.containers(pod_id=pod.id))

    def pods(self, id: str = "", labels: Mapping[str, str] | None = None) -> list[PodSample]:
        if id:
            try:
                items = [self.pod_source.get(id)]
            except NotFound:
                return []
        else:
            items = self.pod_source.list()
        if labels:
            items = [p for p in items if all(p.labels.get(k) == v for k, v in labels.items())]
        by_pod: dict[str, list[ContainerSample]] = {}
        wanted = {p.id for p in items}
        for sample in self.containers():
            if sample.pod_id in wanted:
                by_pod.setdefault(sample.pod_id, []).append(sample)
        samples = [
            self._sample_pod(p, by_pod.get(p.id, [])) for p in sorted(items, key=lambda p: p.created_at)
        ]
        if not id and not labels:
            self.forget_gone(samples)  # a full listing: what it lacks is gone
        return samples

    def _pod_cgroup(self, pod: Pod) -> tuple[dict[str, Path], str] | None:
        """(controller -> dir, cgroup path) of pod ``pod``; fixed for its life, so computed once
        (kept with the containers', under "pod:<id>")."""
        if not pod.cgroup_parent:
            return None  # the shared default parent holds every such pod: no per-pod cgroup to read
        key = ("pod:" + pod.id, pod.cgroup_parent)
        known = self._cgroup_dirs.get(key)
        if known is None:
            known = self._cgroup_dirs[key] = self.cgroups.pod_stat_dirs(pod.cgroup_parent)
        return known

    def _sample_pod(self, pod: Pod, containers: Iterable[ContainerSample]) -> PodSample:
        members = tuple(containers)
        cgroup: CgroupSample | None = None
        cgroup_path = ""
        ready = pod.state == READY
        running = [m.cgroup for m in members if m.cgroup is not None]
        if ready or running:
            located = None
            try:
                located = self._pod_cgroup(pod)
            except Exception as exc:  # a parent the driver refuses: report what the containers give
                log.debug("pod cgroup unknown", extra={"pod_id": pod.id, "error": str(exc)})
            if located is not None:
                dirs, cgroup_path = located
                try:
                    cgroup = read_cgroup(dirs)
                except Exception as exc:
                    log.warning("pod cgroup unreadable", extra={"pod_id": pod.id, "error": repr(exc)})
                if cgroup is not None and cgroup.cpu is None and cgroup.memory is None:
                    cgroup = None
            if cgroup is None and running:
                cgroup = sum_samples(running)
            elif cgroup is not None:
                # Processes of the pod are those of its containers (the parent also holds monitors).
                processes = sum(s.processes or 0 for s in running)
                cgroup = _with_processes(cgroup, processes)
        rate = None
        if cgroup is not None and cgroup.cpu is not None:
            rate = self.rates.update("pod:" + pod.id, cgroup.timestamp_ns, cgroup.cpu.usage_ns)
        network: NetworkSample | None = None
        if ready and pod.netns_path:
            try:
                network = _pod_network(pod.netns_path, members)
            except FileNotFoundError:
                pass  # the pod is being stopped: its pin went away after the state check
            except Exception as exc:
                log.warning("pod netns unreadable", extra={"pod_id": pod.id, "error": repr(exc)})
        return PodSample(
            id=pod.id,
            name=pod.metadata.name,
            uid=pod.metadata.uid,
            namespace=pod.metadata.namespace,
            attempt=pod.metadata.attempt,
            state=pod.state,
            labels=dict(pod.labels),
            annotations=dict(pod.annotations),
            created_at_ns=pod.created_at,
            prom=PromLabels(
                container="",
                pod=pod.metadata.name,
                namespace=pod.metadata.namespace,
                id=cgroup_path,
                image="",
                name=pod.id,
            ),
            cgroup=cgroup,
            network=network,
            cpu_nano_cores=rate,
            containers=members,
        )

    # --- bookkeeping --------------------------------------------------------------------------------

    def forget_gone(self, pods: Iterable[PodSample]) -> None:
        """After a full scrape: drop rate baselines and cached walks of what no longer exists."""
        keys: set[str] = set()
        uppers: set[str] = set()
        for pod in pods:
            keys.add("pod:" + pod.id)
            for c in pod.containers:
                keys.add(c.id)
                if c.fs is not None:
                    uppers.add(c.fs.path)
        self.rates.forget(keys)
        self.fs_cache.forget(uppers)
        for key in list(self._cgroup_dirs):  # list() copies atomically; other threads may be adding
            if key[0] not in keys:
                self._cgroup_dirs.pop(key, None)

    def all_pods(self) -> list[PodSample]:
        """Every pod with its containers (one read of each), for an exporter scrape."""
        start = time.monotonic()
        samples = self.pods()
        log.debug(
            "sampled",
            extra={"pods": len(samples), "duration_ms": (time.monotonic() - start) * 1000},
        )
        return samples


def _pod_network(netns_path: str, members: Iterable[ContainerSample]) -> NetworkSample | None:
    """The counters of a pod's namespace: through a running container's process when there is one
    (a file read), else over rtnetlink from inside the namespace (a thread, a socket, pyroute2)."""
    pids = [m.pid for m in members if m.pid > 0]
    return (read_via_pids(netns_path, pids) if pids else None) or read_netns(netns_path)


def _with_processes(sample: CgroupSample, processes: int) -> CgroupSample:
    return dataclasses.replace(sample, processes=processes)


@functools.lru_cache(maxsize=64)
def _mountpoint(path: str) -> str:
    """The mount point of the filesystem holding ``path`` (CRI's FilesystemIdentifier)."""
    try:
        current = os.path.realpath(path)
        device = os.stat(current).st_dev
    except OSError:
        return path
    while current != "/":
        parent = os.path.dirname(current)
        try:
            if os.stat(parent).st_dev != device:
                return current
        except OSError:
            return current
        current = parent
    return "/"

