"""A container's devices: CRI Device requests (and, privileged, the host's /dev) as OCI device entries
and device cgroup rules. CDI devices are edited in afterwards (cri/containers/cdi/)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from calyx_base.errors import InvalidArgument
from cri.api import api_pb2 as pb


def _entries(
    host: str, container: str, permissions: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(linux.devices entry, linux.resources.devices rule) for a device node or every node under a dir."""
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
    return [(device, rule)]


def device_config(
    config: pb.ContainerConfig, privileged: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The OCI ``linux.devices`` and the device cgroup rules: the requested devices (a directory gives
    every device node under it); privileged, every device of the host's /dev and no rule limiting them."""
    devices: list[dict[str, Any]] = []
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
                devices.extend(d for d, _ in _entries(str(entry), str(entry), "rwm"))
            except (InvalidArgument, OSError):
                continue
    for dev in config.devices:
        for device, rule in _entries(dev.host_path, dev.container_path, dev.permissions):
            devices.append(device)
            if not privileged:
                rules.append(rule)
    return devices, rules
