"""CRI container resources -> OCI ``linux.resources``: the one mapping, for the spec at create and for
UpdateContainerResources alike, so both agree on what a CRI value means on this host. The cgroup
driver (sandbox/cgroups) takes the OCI dict; refusals of values this host cannot honour are
INVALID_ARGUMENT here, before runc or the kernel is asked.
"""

from __future__ import annotations

import logging
from typing import Any

from calyx_base.errors import InvalidArgument
from cri.api import api_pb2 as pb
from sandbox.cgroups.hierarchy import Hierarchy, Mode
from sandbox.cgroups.resources import (
    ONLINE_CPUS,
    ONLINE_NODES,
    host_page_sizes,
    online,
    parse_list,
    swap_accounting,
)

log = logging.getLogger("cri.containers.resources")

MAX_SHARES = 262_144
MIN_SHARES = 2
# Below this, runc's own init (about 2.5 MB, in the container's cgroup while it sets the container up)
# does not fit and runc create fails; Docker refuses under 6 MB too.
MIN_MEMORY = 6 * 1024 * 1024


def to_oci(
    resources: pb.LinuxContainerResources, hierarchy: Hierarchy, pids_limit: int = 0
) -> dict[str, Any]:
    """OCI ``linux.resources`` from CRI ``LinuxContainerResources`` (``oom_score_adj`` is the process's).

    Zero means "not set" for every CRI number, as kubelet uses it. Values this host cannot apply are
    handled the way kubelet expects: hugepage limits are skipped without a hugetlb controller; ``unified``
    keys are refused on cgroup v1 (they have no meaning there and runc would fail later).
    """
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if resources.cpu_shares:
        if resources.cpu_shares < 0:
            raise InvalidArgument(f"cpu_shares {resources.cpu_shares} is negative")
        cpu["shares"] = min(max(resources.cpu_shares, MIN_SHARES), MAX_SHARES)
    if resources.cpu_quota:
        if resources.cpu_quota < -1 or 0 < resources.cpu_quota < 1000:
            raise InvalidArgument(f"cpu_quota {resources.cpu_quota} is out of range (-1 or >= 1000)")
        cpu["quota"] = resources.cpu_quota
    if resources.cpu_period:
        if not 1000 <= resources.cpu_period <= 1_000_000:
            raise InvalidArgument(f"cpu_period {resources.cpu_period} is out of range (1000..1000000)")
        cpu["period"] = resources.cpu_period
    if resources.cpuset_cpus:
        cpu["cpus"] = _cpuset(resources.cpuset_cpus, "cpuset_cpus")
    if resources.cpuset_mems:
        cpu["mems"] = _cpuset(resources.cpuset_mems, "cpuset_mems")
    if cpu:
        out["cpu"] = cpu

    memory: dict[str, Any] = {}
    limit = resources.memory_limit_in_bytes
    swap = resources.memory_swap_limit_in_bytes
    if limit < 0 and limit != -1:
        raise InvalidArgument(f"memory_limit_in_bytes {limit} is negative")
    if 0 < limit < MIN_MEMORY:
        raise InvalidArgument(f"memory_limit_in_bytes {limit} is below the minimum of {MIN_MEMORY} (6 MiB)")
    if limit:
        memory["limit"] = limit
    if swap < -1:
        raise InvalidArgument(f"memory_swap_limit_in_bytes {swap} is negative (only -1, unlimited, is)")
    if swap > 0 and limit <= 0:
        raise InvalidArgument(
            f"memory_swap_limit_in_bytes {swap} needs a memory_limit_in_bytes (it counts memory plus swap)"
        )
    if swap:
        if swap > 0 and limit > 0 and swap < limit:
            raise InvalidArgument(
                f"memory_swap_limit_in_bytes {swap} is below memory_limit_in_bytes {limit} "
                "(it counts memory plus swap)"
            )
        if swap_accounting(hierarchy):
            memory["swap"] = swap
        else:
            log.info("no swap accounting on this host: swap limit ignored", extra={"swap": swap})
    elif limit > 0 and swap_accounting(hierarchy):
        memory["swap"] = limit  # no swap beyond the memory limit unless asked for, as kubelet expects
    if memory:
        out["memory"] = memory

    if pids_limit > 0:
        out["pids"] = {"limit": pids_limit}

    if resources.hugepage_limits:
        hugepages = _hugepages(resources.hugepage_limits, hierarchy)
        if hugepages:
            out["hugepageLimits"] = hugepages

    if resources.unified:
        if hierarchy.mode is not Mode.V2:
            raise InvalidArgument(
                f"unified cgroup keys {sorted(resources.unified)} need cgroup v2; this host runs cgroup v1"
            )
        for key in resources.unified:
            if "/" in key or "." not in key or key.startswith("cgroup."):
                raise InvalidArgument(f"unified cgroup key {key!r} is not a controller file name")
        out["unified"] = dict(resources.unified)
    return out


def _cpuset(value: str, name: str) -> str:
    """A cpu or memory-node list ("0-2,4") of CPUs or nodes this host has online (the kernel refuses
    others, and runc then fails the create)."""
    text = value.replace(" ", "")
    wanted = parse_list(text)
    if wanted is None:
        raise InvalidArgument(f"{name} {value!r} is not a cpu/node list such as 0-2,4")
    have = online(ONLINE_CPUS if name == "cpuset_cpus" else ONLINE_NODES)
    if have is not None and not wanted <= have:
        missing = sorted(wanted - have)[:8]
        raise InvalidArgument(f"{name} {value!r} names {missing}, not online on this host")
    return text


def _hugepages(limits: Any, hierarchy: Hierarchy) -> list[dict[str, Any]]:
    if not hierarchy.has("hugetlb"):
        log.info(
            "no hugetlb cgroup controller on this host: hugepage limits skipped",
            extra={"page_sizes": ",".join(h.page_size for h in limits)},
        )
        return []
    sizes = host_page_sizes()
    out = []
    for item in limits:
        if item.page_size not in sizes:
            raise InvalidArgument(
                f"hugepage size {item.page_size!r} is not supported by this kernel ({sorted(sizes)})"
            )
        out.append({"pageSize": item.page_size, "limit": item.limit})
    return out
