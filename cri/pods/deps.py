"""What the pod lifecycle steps (run.py, stop.py, remove.py, recover.py, resources.py) work with, and
the small interfaces of the collaborators pods do not own: the containers subsystem (which stops and
removes a pod's containers) and whoever publishes lifecycle events."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from calyx_base.cleanups import Cleanups
from cri.config import RuntimeConfig
from cri.pods.index import PodIndex
from cri.pods.model import Pod
from cri.pods.watch import HolderWatch
from sandbox.cgroups import CgroupDriver
from sandbox.network import PodNetworks


class PodContainers(Protocol):
    """The containers of a pod, as its stop and removal need them."""

    def stop_pod_containers(self, pod_id: str, timeout_s: float) -> None: ...

    def remove_pod_containers(self, pod_id: str) -> None: ...


class PodEvents(Protocol):
    """Where a pod's lifecycle events go (GetContainerEvents)."""

    def pod_changed(self, pod: Pod, event_type: int) -> None: ...


@dataclass(frozen=True)
class PodDeps:
    index: PodIndex
    networks: PodNetworks
    cgroups: CgroupDriver
    containers: PodContainers
    events: PodEvents
    cleanups: Cleanups
    handlers: RuntimeConfig  # runtime handlers a pod may name
    run_root: Path
    watch: HolderWatch
