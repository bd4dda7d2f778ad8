"""cgroup drivers: ``runtime.cgroups`` is the one chosen by config ``cgroup.driver`` (as kubelet's).

See driver.CgroupDriver for the interface; cgroupfs.py and systemd.py for the two drivers. In short,
for a pod parent P and a container id C ("" as P means the driver's default parent):

- pods: ``validate_parent(P)``, ``prepare_parent(P)`` at RunPodSandbox, ``remove_parent(P)`` at removal.
- containers: spec ``linux.cgroupsPath = container_cgroups_path(P, C)`` (systemd ``P:calyx:C``, runc
  then needs ``--systemd-cgroup``; cgroupfs ``P/calyx-C``) and ``linux.resources = oci_resources(r)``;
  ``place_monitor(C, P, conmon_pid)`` after launch; ``update(C, P, r)`` for UpdateContainerResources;
  ``kill_all(C, P, sig)``/``pids(C, P)`` for every process of the container; ``remove_container(C, P)``
  after ``runc delete``; ``cgroup_dirs(C, P)`` for stats.
"""

from __future__ import annotations

from cri.config import Config
from cri.runtime import Runtime
from sandbox.cgroups.driver import CgroupDriver


def build_driver(config: Config) -> CgroupDriver:
    """The driver the config names, with its options."""
    pids_limit, default_parent = config.cgroup.pids_limit, config.cgroup.default_parent
    if config.cgroup.driver == "systemd":
        from sandbox.cgroups.systemd import SystemdDriver

        return SystemdDriver(pids_limit=pids_limit, default_parent=default_parent)
    from sandbox.cgroups.cgroupfs import CgroupfsDriver

    return CgroupfsDriver(pids_limit=pids_limit, default_parent=default_parent)


def register(runtime: Runtime) -> None:
    """Subsystem builder: ``runtime.cgroups`` (pods and containers use it, so it comes before them)."""
    runtime.register("cgroups", build_driver(runtime.config))


__all__ = ["CgroupDriver", "build_driver", "register"]
