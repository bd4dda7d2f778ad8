"""cgroup drivers: the daemon uses the one chosen by config ``cgroup.driver`` (as kubelet's).

See driver.CgroupDriver for the interface; cgroupfs.py and systemd.py for the two drivers. In short,
for a pod parent P and a container id C ("" as P means the driver's default parent):

- pods: ``validate_parent(P)``, ``prepare_parent(P)`` at RunPodSandbox, ``remove_parent(P)`` at removal.
- containers: spec ``linux.cgroupsPath = container_cgroups_path(P, C)`` (systemd ``P:calyx:C``, runc
  then needs ``--systemd-cgroup``; cgroupfs ``P/calyx-C``); ``place_monitor(C, P, conmon_pid)`` after
  launch; ``update(C, P, oci)`` for UpdateContainerResources (OCI ``linux.resources``, which the
  containers subsystem makes from CRI's: cri/containers/resources.py);
  ``kill_all(C, P, sig)``/``pids(C, P)`` for every process of the container; ``remove_container(C, P)``
  after ``runc delete``; ``cgroup_dirs(C, P)`` for stats.
"""

from __future__ import annotations

from sandbox.cgroups.driver import CgroupDriver


def build_driver(driver: str, pids_limit: int = 0, default_parent: str = "") -> CgroupDriver:
    """The driver named ``driver`` ("systemd" or "cgroupfs", config cgroup.driver), with its options."""
    if driver == "systemd":
        from sandbox.cgroups.systemd import SystemdDriver

        return SystemdDriver(pids_limit=pids_limit, default_parent=default_parent)
    from sandbox.cgroups.cgroupfs import CgroupfsDriver

    return CgroupfsDriver(pids_limit=pids_limit, default_parent=default_parent)


__all__ = ["CgroupDriver", "build_driver"]
