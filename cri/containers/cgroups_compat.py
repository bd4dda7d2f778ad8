"""The container side of cgroups: use ``runtime.cgroups`` (sandbox/cgroups) when it exists.

Until the cgroup drivers are registered, containers still run: cgroupfs paths are
``<parent>/calyx-<id>`` (runc makes the dirs), resources are converted here with the plain CRI to OCI
mapping, and updates go through ``runc update``.
"""

from __future__ import annotations

from typing import Any

from cri.api import api_pb2 as pb
from cri.containers.resources import to_oci

DEFAULT_PARENT = "/calyx"


def _driver(runtime: Any) -> Any:
    return getattr(runtime, "cgroups", None)


def cgroups_path(runtime: Any, parent: str, container_id: str) -> str:
    driver = _driver(runtime)
    if driver is not None:
        return str(driver.container_cgroups_path(parent, container_id))
    base = parent or DEFAULT_PARENT
    if not base.startswith("/"):
        base = "/" + base
    return f"{base.rstrip('/')}/calyx-{container_id}"


def prepare_parent(runtime: Any, parent: str) -> None:
    driver = _driver(runtime)
    if driver is not None and parent:
        driver.prepare_parent(parent)


def oci_resources(runtime: Any, resources: pb.LinuxContainerResources) -> dict[str, Any]:
    driver = _driver(runtime)
    if driver is not None:
        return to_oci(resources, driver.hierarchy, driver.pids_limit)
    return plain_oci_resources(resources)


def plain_oci_resources(r: pb.LinuxContainerResources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if r.cpu_shares:
        cpu["shares"] = r.cpu_shares
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    if r.cpu_period:
        cpu["period"] = r.cpu_period
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if r.memory_limit_in_bytes:
        memory["limit"] = r.memory_limit_in_bytes
        memory["swap"] = r.memory_swap_limit_in_bytes or r.memory_limit_in_bytes
    if memory:
        out["memory"] = memory
    if r.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit} for h in r.hugepage_limits]
    if r.unified:
        out["unified"] = dict(r.unified)
    return out


def place_monitor(runtime: Any, container_id: str, parent: str, pid: int) -> None:
    """Move conmon into its own cgroup (the driver decides where); without a driver it stays put."""
    driver = _driver(runtime)
    if driver is not None and pid > 0:
        driver.place_monitor(container_id, parent, pid)


def remove_container(runtime: Any, container_id: str, parent: str) -> None:
    driver = _driver(runtime)
    if driver is not None:
        driver.remove_container(container_id, parent)
