"""A container's devices: CRI Device requests (and, privileged, the host's /dev) as OCI device entries
and device cgroup rules; in a pod user namespace, as bind mounts of the host nodes asked for (runc
cannot create nodes there) with the same rules. CDI devices are edited in afterwards
(cri/containers/cdi/)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calyx_base.errors import InvalidArgument
from cri.api import api_pb2 as pb
from cri.containers.userns_nodes import PodIds, check_openable
from cri.containers.validate import container_path


@dataclass(frozen=True)
class _Node:
    """A requested device node: its OCI device entry and cgroup rule, and the host node it is."""

    device: dict[str, Any]
    rule: dict[str, Any]
    source: str  # the host node, symlinks resolved
    st: os.stat_result


def _entries(host: str, container: str, permissions: str) -> list[_Node]:
    """The device node ``host`` is, or every node under the dir ``host`` is (other files are skipped)."""
    real = os.path.realpath(host)
    try:
        st = os.stat(real)
    except OSError:
        raise InvalidArgument(f"device {host!r} does not exist") from None
    if stat.S_ISDIR(st.st_mode):
        out = []
        for dirpath, _dirs, files in os.walk(real):
            for name in files:
                sub = os.path.join(dirpath, name)
                rel = os.path.relpath(sub, real)
                try:
                    out.extend(_entries(sub, os.path.join(container, rel), permissions))
                except InvalidArgument:
                    continue
        return out
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise InvalidArgument(f"{host!r} is not a device node")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    device = {
        "path": container,
        "type": kind,
        "major": major,
        "minor": minor,
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }
    rule = {"allow": True, "type": kind, "major": major, "minor": minor, "access": permissions or "rwm"}
    return [_Node(device, rule, real, st)]


def _bind(node: _Node, host: str, permissions: str, ids: PodIds) -> dict[str, Any]:
    """The OCI bind mount of ``node`` at its container path, for a pod user namespace: runc 1.1 cannot
    mknod there and would bind the host's node at the *container* path instead (another node, or none),
    so the node asked for is bound by path here. Its mode and owner are the host's: a node no process of
    the pod could open is refused rather than failing with EACCES inside."""
    where = f"device {host} (at {node.device['path']})"
    if node.source != host:
        where = f"device {node.source} (at {node.device['path']}, asked for as {host})"
    why = "in a pod user namespace the container gets the host's node itself (no node can be made there)"
    check_openable(node.st, permissions, ids, where, why)
    return {"destination": node.device["path"], "type": "bind", "source": node.source, "options": ["bind"]}


def device_config(
    config: pb.ContainerConfig, privileged: bool, ids: PodIds | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The OCI ``linux.devices``, the device cgroup rules and, in a pod user namespace (``ids``: the host
    ids it maps), the bind mounts standing for the requested devices. A directory gives every device
    node under it; privileged (never in a pod user namespace), every device of the host's /dev and no
    rule limiting them."""
    devices: list[dict[str, Any]] = []
    binds: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    if privileged:
        rules = [{"allow": True, "access": "rwm"}]
        for entry in sorted(Path("/dev").iterdir()):
            if entry.name in (
                "pts",
                "shm",
                "mqueue",
                "console",
                "ptmx",
                "tty",
                "fd",
                "stdin",
                "stdout",
                "stderr",
            ):
                continue
            try:
                if entry.is_symlink() or not (entry.is_char_device() or entry.is_block_device()):
                    continue
                devices.extend(n.device for n in _entries(str(entry), str(entry), "rwm"))
            except (InvalidArgument, OSError):
                continue
    placed: set[str] = set()  # validate.check refused two requests at one path; a dir may still hold one
    for dev in config.devices:
        for node in _entries(dev.host_path, dev.container_path, dev.permissions):
            inside = container_path(node.device["path"])
            if inside in placed:
                raise InvalidArgument(
                    f"device {dev.host_path}: container path {inside} is also given by another device"
                )
            placed.add(inside)
            if ids is None:
                devices.append(node.device)
            else:
                binds.append(_bind(node, dev.host_path, dev.permissions, ids))
            if not privileged:
                rules.append(node.rule)
    return devices, rules, binds
