"""CRI mounts to OCI mounts: bind options, propagation (and the host side it needs), default mounts.

kubelet's expectations: a host path that is a symlink is resolved (the bind follows it anyway, but the
propagation checks must look at the real path); a missing host path is created as a directory (by
CreateContainer's preparation, ``host_path_ready``: the spec builder only names it);
HOST_TO_CONTAINER (rslave) needs the host path on a shared or slave mount, BIDIRECTIONAL (rshared) on
a shared one, otherwise mounts made on the host would silently never show up inside.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from calyx_base.errors import FailedPrecondition, InvalidArgument
from cri.api import api_pb2 as pb
from sandbox.mounts import mount_of


def real_host_path(host_path: str) -> str | None:
    """``host_path`` with its symlinks resolved, as the bind would follow them (and as idmapping and the
    reachability checks must see it); None when it leads to nothing."""
    real = os.path.realpath(host_path)
    return real if os.path.exists(real) else None


def host_source(host_path: str) -> str:
    """The real host path to bind: symlinks resolved; a missing path named as it will be once
    ``host_path_ready`` has made it a directory (nothing is made here)."""
    if not host_path or not host_path.startswith("/"):
        raise InvalidArgument(f"mount host path {host_path!r} must be absolute")
    path = Path(host_path)
    if path.is_symlink() and not path.exists():
        raise InvalidArgument(
            f"mount host path {host_path!r} is a dangling symlink to {os.path.realpath(host_path)}"
        )
    return os.path.realpath(host_path)


# The host paths creates in flight need, by how many of them: a create that fails takes back the dirs
# it made only where no other create still needs them (one that found them made meanwhile). Process-wide,
# as the host's filesystem is; a lock orders the making, the claims and the removals.
_claims_lock = threading.Lock()
_claims: Counter[Path] = Counter()


@contextlib.contextmanager
def host_path_ready(host_path: str) -> Iterator[list[Path]]:
    """Make a missing ``host_path`` a directory, as kubelet expects, and hold it for the create in the
    ``with``; yields the dirs made, deepest first. If the create fails (an exception leaves the
    ``with``) they go again, except one another create in flight needs or something was put in."""
    path = Path(host_path)
    with _claims_lock:
        made = make_host_path(path)
        _claims[path] += 1
    try:
        yield made
    except BaseException:
        with _claims_lock:
            _unclaim(path)
            remove_made([p for p in made if not _needed(p)])
        raise
    else:
        with _claims_lock:
            _unclaim(path)


def _unclaim(path: Path) -> None:
    _claims[path] -= 1
    if not _claims[path]:
        del _claims[path]


def _needed(path: Path) -> bool:
    """Whether a create in flight needs ``path``: it or a path under it is claimed."""
    return any(claimed.is_relative_to(path) for claimed in _claims)  # the path itself included


def make_host_path(path: Path) -> list[Path]:
    """Make a missing ``path`` a directory; the dirs made, deepest first."""
    if path.exists() or path.is_symlink():
        return []
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    path.mkdir(parents=True, exist_ok=True)
    return missing


def remove_made(made: list[Path]) -> None:
    """Remove the dirs ``make_host_path`` made, deepest first; one something has been put in stays."""
    for path in made:
        with contextlib.suppress(OSError):
            path.rmdir()


def oci_mount(mount: pb.Mount) -> tuple[dict[str, Any], str]:
    """The OCI mount of a CRI mount and the rootfs propagation it needs ("", "rslave" or "rshared")."""
    if not mount.container_path.startswith("/"):
        raise InvalidArgument(f"mount container path {mount.container_path!r} must be absolute")
    source = host_source(mount.host_path)
    options = ["rbind"]
    propagation = ""
    if mount.propagation == pb.PROPAGATION_BIDIRECTIONAL:
        info = mount_of(source)
        if not info.shared:
            raise FailedPrecondition(
                f"host path {source} is on mount {info.mount_point} which is not shared: "
                "bidirectional propagation needs a shared mount"
            )
        options.append("rshared")
        propagation = "rshared"
    elif mount.propagation == pb.PROPAGATION_HOST_TO_CONTAINER:
        info = mount_of(source)
        if not (info.shared or info.slave):
            raise FailedPrecondition(
                f"host path {source} is on mount {info.mount_point} which is neither shared nor slave: "
                "host-to-container propagation needs one of them"
            )
        options.append("rslave")
        propagation = "rslave"
    else:
        options.append("rprivate")
    if mount.recursive_read_only:
        if not mount.readonly:
            raise InvalidArgument("recursive_read_only needs readonly too")
        if mount.propagation != pb.PROPAGATION_PRIVATE:
            raise InvalidArgument("recursive_read_only needs private propagation")
        options.append("rro")
    elif mount.readonly:
        options.append("ro")
    else:
        options.append("rw")
    return {
        "destination": mount.container_path,
        "type": "bind",
        "source": source,
        "options": options,
    }, propagation


def image_volume_mount(mount: pb.Mount, source: str) -> dict[str, Any]:
    """The OCI mount of an image volume staged at ``source`` (cri/containers/image_volumes.py): always
    read-only and private (nothing propagates out of an image)."""
    if not mount.container_path.startswith("/"):
        raise InvalidArgument(f"mount container path {mount.container_path!r} must be absolute")
    if mount.propagation != pb.PROPAGATION_PRIVATE:
        raise InvalidArgument(f"image volume {mount.container_path}: propagation must be private")
    options = ["rbind", "rprivate", "rro" if mount.recursive_read_only else "ro"]
    return {"destination": mount.container_path, "type": "bind", "source": source, "options": options}


def base_mounts(readonly_sys: bool) -> list[dict[str, Any]]:
    """The kernel filesystems every container gets."""
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro" if readonly_sys else "rw"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro" if readonly_sys else "rw"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
    ]
