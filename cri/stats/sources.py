"""What stats read, as small interfaces: the containers (states fresh), the pods, and the samples a
scrape renders. The daemon hands over the real ones (cri/build.py); tests may hand over small fakes."""

from __future__ import annotations

from typing import Protocol

from cri.containers.model import Container
from cri.pods.model import Pod
from cri.stats.model import PodSample


class ContainerSource(Protocol):
    """The containers, their states fresh (cri/containers/exits.py's ExitTracker)."""

    def get(self, container_id: str) -> Container: ...

    def list(self) -> list[Container]: ...


class PodSource(Protocol):
    """The pods (cri/pods/index.py's PodIndex)."""

    def get(self, pod_id: str) -> Pod: ...

    def list(self) -> list[Pod]: ...


class Sampler(Protocol):
    """One sample of every pod and its containers (cri/stats/service.py's StatsService)."""

    def all_pods(self) -> list[PodSample]: ...
