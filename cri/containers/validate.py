"""Checks on a ContainerConfig before anything is made: what would be interpreted is refused.

Strings go to execve (argv, env: a NUL cuts them, an env key with ``=`` sets another variable), to paths
on the host (the log file, mount and device sources), to the OCI spec runc reads (annotations runc or a
runtime acts on) and to the device cgroup. Values the kernel or a runtime would read as more than the
field means are refused with INVALID_ARGUMENT, naming the field.
"""

from __future__ import annotations

import posixpath

from calyx_base.errors import InvalidArgument
from cri import fields
from cri.api import api_pb2 as pb

# Annotations a runtime acts on: runc turns org.systemd.property.* into properties of the container's
# systemd unit (DeviceAllow, memory limits...), crun reads run.oci.*, CRIU org.criu.*. kubelet never
# sends them; a client that could would change the container's confinement.
INTERPRETED_ANNOTATIONS = ("org.systemd.property.", "run.oci.", "org.criu.")
DEVICE_ACCESS = set("rwm")


def check(config: pb.ContainerConfig) -> None:
    if not config.metadata.name:
        raise InvalidArgument("container metadata.name is required")
    fields.name("container metadata.name", config.metadata.name)
    if not config.image.image:
        raise InvalidArgument("container image is required")
    if config.log_path:
        fields.relative_path("log_path (relative to the pod's log_directory)", config.log_path)
    for arg in (*config.command, *config.args):
        fields.no_nul("command argument", arg)
    for kv in config.envs:
        if not kv.key or "=" in kv.key:
            raise InvalidArgument(f"env name {kv.key!r} must be non-empty and hold no '='")
        fields.no_nul("env name", kv.key)
        fields.no_nul(f"env {kv.key} value", kv.value)
    fields.no_nul("working_dir", config.working_dir)
    _mounts(config)
    _devices(config)
    sc = config.linux.security_context
    for path in (*sc.masked_paths, *sc.readonly_paths):
        fields.absolute_path("masked or readonly path", path)
    fields.no_nul("run_as_username", sc.run_as_username)
    for key in config.annotations:
        if key.startswith(INTERPRETED_ANNOTATIONS):
            raise InvalidArgument(
                f"annotation {key!r}: annotations starting with {', '.join(INTERPRETED_ANNOTATIONS)} "
                "are read by the OCI runtime and are not accepted"
            )


def _mounts(config: pb.ContainerConfig) -> None:
    for m in config.mounts:
        fields.absolute_path("mount container_path", m.container_path)
        if not m.image.image:
            fields.absolute_path(f"mount {m.container_path} host_path", m.host_path)


def _devices(config: pb.ContainerConfig) -> None:
    """Two devices at one container path would stack: runc keeps the first node, in a pod user namespace
    the last bind mount wins. Which one the container gets is not for Calyx to guess: refused."""
    seen: set[str] = set()
    for d in config.devices:
        fields.absolute_path("device host_path", d.host_path)
        fields.absolute_path("device container_path", d.container_path)
        if not set(d.permissions) <= DEVICE_ACCESS:
            raise InvalidArgument(f"device {d.host_path}: permissions {d.permissions!r}: only r, w and m")
        inside = container_path(d.container_path)
        if inside in seen:
            raise InvalidArgument(
                f"device container_path {d.container_path!r}: {inside} is already another device's path"
            )
        seen.add(inside)


def container_path(path: str) -> str:
    """The path a device lands at in the container: ``/dev//x/``, ``/dev/./x`` and ``/dev/y/../x`` are
    all ``/dev/x`` (``..`` stops at the root there)."""
    return "/" + posixpath.normpath(path).lstrip("/")
