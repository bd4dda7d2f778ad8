"""StatsService's remembered cgroup locations: a pod's is worked out once, read from its real cgroup on
every sampling, and forgotten after the first full sampling that no longer finds the pod.

The service gets a pod listing of its own making, no containers, and the real cgroupfs driver, which
says where a pod's cgroup is.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from cri.config import MetricsConfig
from cri.stats.service import StatsService
from sandbox.cgroups import build_driver

MiB = 1024 * 1024


class _Pods:
    def __init__(self) -> None:
        self.items: dict[str, Any] = {}

    def list(self) -> list[Any]:
        return list(self.items.values())

    def get(self, pod_id: str) -> Any:
        return self.items[pod_id]


class _NoContainers:
    def get(self, container_id: str) -> Any:
        raise AssertionError("no container is asked for")

    def list(self) -> list[Any]:
        return []


def _pod(pod_id: str, cgroup_parent: str) -> Any:
    return SimpleNamespace(
        id=pod_id,
        metadata=SimpleNamespace(name="p", uid="u", namespace="ns", attempt=0),
        state="READY",
        created_at=1,
        labels={},
        annotations={},
        cgroup_parent=cgroup_parent,
        netns_path=None,
    )


def test_a_pods_cgroup_location_is_kept_while_it_lives_and_dropped_after(workloads, v1_cgroup) -> None:  # type: ignore[no-untyped-def]
    first, second = v1_cgroup(), v1_cgroup()
    work = workloads()
    first.add(work.pid)
    pods = _Pods()
    service = StatsService(_NoContainers(), pods, build_driver("cgroupfs"), MetricsConfig())
    pods.items["a" * 64] = _pod("a" * 64, "/" + first.name)
    (sample,) = service.pods()
    assert sample.prom.id == "/" + first.name
    assert sample.cgroup is not None and sample.cgroup.memory is not None
    assert ("pod:" + "a" * 64, "/" + first.name) in service._cgroup_dirs
    work.run(f"hold {32 * MiB}")  # the remembered location is read afresh every time
    (again,) = service.pods()
    assert again.cgroup is not None and again.cgroup.memory is not None
    assert again.cgroup.memory.rss_bytes is not None and sample.cgroup.memory.rss_bytes is not None
    assert again.cgroup.memory.rss_bytes - sample.cgroup.memory.rss_bytes >= 31 * MiB
    # The pod is removed and another comes: the first one's location goes with the next full sampling.
    del pods.items["a" * 64]
    pods.items["b" * 64] = _pod("b" * 64, "/" + second.name)
    (other,) = service.pods()
    assert other.prom.id == "/" + second.name
    assert [key for key in service._cgroup_dirs if key[0].startswith("pod:")] == [
        ("pod:" + "b" * 64, "/" + second.name)
    ]
    # A pod whose parent changed (a new record under the same id) is located anew, not from memory.
    pods.items["b" * 64] = _pod("b" * 64, "/" + first.name)
    (moved,) = service.pods()
    assert moved.prom.id == "/" + first.name
    assert moved.cgroup is not None and moved.cgroup.processes == 0  # the pod's processes are its containers'
