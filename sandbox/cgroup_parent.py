"""Syntax of a pod's ``cgroup_parent`` for each cgroup driver.

kubelet sends the parent in its own driver's syntax: systemd ``kubepods-besteffort-pod<uid>.slice``,
cgroupfs ``/kubepods/besteffort/pod<uid>``. A value in the other syntax means kubelet and Calyx disagree
about the driver, which would put containers outside kubelet's accounting: refuse it early.
The cgroups subsystem (runtime.cgroups) has the authoritative check; this one is used when it is absent.
"""

from __future__ import annotations

import re

from calyx_base.errors import InvalidArgument

_SLICE = re.compile(r"^[A-Za-z0-9:_.\\]+(-[A-Za-z0-9:_.\\]+)*\.slice$")
_CGROUPFS_COMPONENT = re.compile(r"^[A-Za-z0-9:_.@+-]+$")


def validate_parent(driver: str, parent: str) -> None:
    """InvalidArgument unless ``parent`` is empty or in ``driver``'s syntax."""
    if not parent:
        return
    if driver == "systemd":
        if "/" in parent or not _SLICE.fullmatch(parent):
            raise InvalidArgument(
                f"cgroup_parent {parent!r} is not a systemd slice name such as "
                "'kubepods-besteffort-pod<uid>.slice' (the cgroup driver is systemd)"
            )
        return
    if not parent.startswith("/") or parent.endswith(".slice"):
        raise InvalidArgument(
            f"cgroup_parent {parent!r} is not an absolute cgroupfs path such as "
            "'/kubepods/besteffort/pod<uid>' (the cgroup driver is cgroupfs)"
        )
    for part in parent.strip("/").split("/"):
        if part and (part in (".", "..") or not _CGROUPFS_COMPONENT.fullmatch(part)):
            raise InvalidArgument(f"cgroup_parent {parent!r} has an invalid component {part!r}")
