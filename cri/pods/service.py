"""The pods subsystem: the entry points of the pod lifecycle, on the pod index.

The logic of each is in its own module (run.py, stop.py, remove.py, resources.py, recover.py) as a
function of PodDeps; listing is PodListing's. A pod whose PID namespace holder dies while the daemon
runs is stopped here, so that kubelet sees it NOTREADY and makes a new one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from calyx_base.cleanups import Cleanups
from calyx_base.errors import NotFound
from cri.api import api_pb2 as pb
from cri.config import RuntimeConfig
from cri.pods.deps import PodContainers, PodDeps, PodEvents
from cri.pods.index import PodIndex
from cri.pods.listing import PodListing
from cri.pods.model import Pod
from cri.pods.recover import recover_pods
from cri.pods.remove import remove_pod
from cri.pods.resources import update_pod_resources
from cri.pods.run import run_pod
from cri.pods.stop import stop_pod
from cri.pods.watch import HolderWatch
from sandbox.cgroups import CgroupDriver
from sandbox.network import PodNetworks

log = logging.getLogger("cri.pods")


class PodService:
    def __init__(
        self,
        index: PodIndex,
        networks: PodNetworks,
        cgroups: CgroupDriver,
        containers: PodContainers,
        events: PodEvents,
        cleanups: Cleanups,
        handlers: RuntimeConfig,
        run_root: Path,
    ) -> None:
        self.index = index
        self.networks = networks
        self.listing = PodListing(index)
        self.watch = HolderWatch(self._holder_exited)
        self.deps = PodDeps(
            index, networks, cgroups, containers, events, cleanups, handlers, run_root, self.watch
        )

    def run(self, request: pb.RunPodSandboxRequest) -> Pod:
        return run_pod(self.deps, request)

    def stop(self, pod_id: str) -> None:
        stop_pod(self.deps, pod_id)

    def remove(self, pod_id: str) -> None:
        remove_pod(self.deps, pod_id)

    def update_resources(self, request: pb.UpdatePodSandboxResourcesRequest) -> None:
        update_pod_resources(self.deps, request)

    def recover(self) -> None:
        recover_pods(self.deps)

    def close(self) -> None:
        self.watch.close()

    def _holder_exited(self, pod_id: str) -> None:
        """A pod's PID holder died: the pod is dead, stop it so that kubelet sees NOTREADY and recreates it.

        Our own stop kills holders too; it holds the pod lock while doing so and leaves the pod NOTREADY,
        so checking the state under the lock tells the two apart.
        """
        with self.index.locked(pod_id):
            try:
                pod = self.index.get(pod_id)
            except NotFound:
                return
            if not pod.ready:
                return
            log.warning("the pod's PID namespace holder exited; stopping the pod", extra={"pod_id": pod_id})
            stop_pod(self.deps, pod_id)
