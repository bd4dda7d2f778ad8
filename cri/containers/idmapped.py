"""Idmapped bind mounts for the containers of a pod with its own user namespace.

kubelet (1.30+) copies the pod's uid and gid mapping onto every CRI ``Mount`` of such a pod and expects
the runtime to idmap it, so that files owned by host root show as root inside and the container's
root writes them as host root (an emptyDir, a configmap, /etc/hosts). The mapping is given in the
pod's own shape (container id 0 -> host id H, length L); the idmapped mount applies it the other way
round (an id stored on disk is read as a container id, so disk uid 0 is the container's root, kuid H).
That is exactly an idmapping through the pod's user namespace, and the only one Calyx makes: any other
mapping is refused with INVALID_ARGUMENT naming the mount. A CDI spec's bind mounts carry no mapping
and get the same one (as the CRI mounts of such a pod, they show host root's files as root's inside).

runc 1.1 cannot make idmapped mounts, so Calyx stages them: the host path is cloned with its submounts
(open_tree OPEN_TREE_CLONE|AT_RECURSIVE; without them for a mount that asks for ``bind``, not
``rbind``), the clone gets the pod's user namespace (mount_setattr MOUNT_ATTR_IDMAP, AT_RECURSIVE)
and is attached (move_mount) at ``<container dir>/idmapped/<n>``; runc is given a bind of that path,
and a bind of an idmapped mount keeps its idmapping. The clone of a shared mount joins its peer group,
so host-to-container and bidirectional propagation still work; a mount the host makes there later
arrives as the host made it, not idmapped (its root's files show as nobody), while the submounts
present at create time are idmapped with the volume.

Once runc has created the container its mount namespace holds its own copy, so the staging mounts are
released at the end of CreateContainer; a crash before that leaves them to recovery (the container is
still CREATING, or unknown to the store), which releases them before the container dir is deleted.
Deleting a dir with a staging mount still attached would delete the volume's files through it, so
``remove_dir`` refuses to.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

from calyx_base import files
from calyx_base.errors import FailedPrecondition, Internal, InvalidArgument
from cri.api import api_pb2 as pb
from sandbox import mounts, trees
from sandbox.userns import IdMap

log = logging.getLogger("cri.containers.idmapped")

STAGING_DIR = "idmapped"
# {staging path: host path} of the staged mounts: config.json names the staging paths (runc binds them),
# which are gone once runc has created the container; ContainerStatus shows the host paths instead.
SOURCES_FILE = "idmapped-sources.json"


def _shape(maps: list[IdMap]) -> str:
    return ",".join(f"{m.container_id}:{m.host_id}:{m.length}" for m in maps) or "none"


def wanted(mount: pb.Mount, pod_maps: tuple[IdMap, IdMap] | None) -> bool:
    """Whether the CRI ``mount`` asks to be idmapped; its mappings must be the pod's own (see above)."""
    if not mount.uidMappings and not mount.gidMappings:
        return False
    where = mount.container_path
    if pod_maps is None:
        raise InvalidArgument(
            f"mount {where}: uid/gid mappings need a pod with its own user namespace (this pod has none)"
        )
    uids = [IdMap(m.container_id, m.host_id, m.length) for m in mount.uidMappings]
    gids = [IdMap(m.container_id, m.host_id, m.length) for m in mount.gidMappings]
    if uids != [pod_maps[0]] or gids != [pod_maps[1]]:
        raise InvalidArgument(
            f"mount {where}: uid mappings {_shape(uids)} and gid mappings {_shape(gids)} must be the pod's "
            f"user namespace mappings ({_shape([pod_maps[0]])} and {_shape([pod_maps[1]])}, as "
            "container:host:length)"
        )
    return True


def staging_dir(container_dir: Path) -> Path:
    return container_dir / STAGING_DIR


def stage(
    mounts: list[dict[str, Any]],
    container_dir: Path,
    user_ns: Path,
    optional: list[dict[str, Any]] | None = None,
    origins: dict[str, str] | None = None,
) -> None:
    """Attach an idmapped clone of each OCI bind mount's source under the container dir and point the
    mount at it. On failure what was staged so far stays for ``release`` (the caller's undo).

    A mount in ``optional`` (the pod's own files and /dev/shm, which nobody asked to idmap) whose
    filesystem refuses idmapping is staged as a plain clone instead: its files then show as
    nobody/nogroup, readable as before, and runc still finds it in the container dir (the pod's own
    dirs are root's alone). ``origins`` names what asked for a mount no CRI request carries (a CDI
    device), by destination, for its errors."""
    if not mounts:
        return
    base = staging_dir(container_dir)
    base.mkdir(exist_ok=True)
    staged: dict[str, str] = {}
    userns_fd = os.open(user_ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for index, mount in enumerate(mounts):
            source = Path(mount["source"])
            destination = str(mount["destination"])
            origin = (origins or {}).get(destination)
            where = f"mount {destination}" + (f" from {origin}" if origin else "")
            remedy = (
                "a pod with a user namespace cannot use it" if origin else "mount it without uid/gid mappings"
            )
            options = mount.get("options") or []
            recursive = "rbind" in options or "bind" not in options
            target = base / str(index)
            if source.is_dir():
                target.mkdir(exist_ok=True)
            else:
                target.touch(exist_ok=True)  # a file is bound on a file
            try:
                _attach(source, target, userns_fd, where, recursive, remedy)
            except FailedPrecondition as exc:
                if not any(mount is o for o in optional or ()):
                    raise
                log.info("not idmapped, staged as it is", extra={"mount": destination, "error": str(exc)})
                _attach(source, target, None, where, recursive, remedy)
            mount["source"] = str(target)
            staged[str(target)] = str(source)
    finally:
        os.close(userns_fd)
    if staged:
        files.replace_text(container_dir / SOURCES_FILE, json.dumps(staged))


def host_sources(container_dir: Path) -> dict[str, str]:
    """The host path of each staging path the container's config.json names (empty: none staged)."""
    try:
        value = json.loads((container_dir / SOURCES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _attach(
    source: Path, target: Path, userns_fd: int | None, where: str, recursive: bool, remedy: str
) -> None:
    """Attach at ``target`` a clone of ``source`` (with its submounts if ``recursive``) idmapped through
    ``userns_fd`` (None: as it is). ``where`` names the mount (and the CDI device it is from), ``remedy``
    says what to do when it cannot be idmapped."""
    try:
        if userns_fd is None:
            fd = mounts.clone(source, recursive=recursive)
        else:
            fd = mounts.clone(source, recursive=recursive, userns_fd=userns_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InvalidArgument(f"{where}: host path {source} is gone") from None
        raise FailedPrecondition(
            f"{where}: host path {source} cannot be idmapped ({exc.strerror}): its filesystem "
            f"or this kernel does not support idmapped mounts; {remedy}"
        ) from None
    try:
        mounts.attach(fd, target)
    except OSError as exc:
        raise Internal(f"{where}: attaching the idmapped {source} failed: {exc.strerror}") from None
    finally:
        os.close(fd)


def release(container_dir: Path) -> None:
    """Detach every staging mount of the container and remove the staging dir. Raises when one stays
    mounted, so that nothing deletes the volume's files through it."""
    base = staging_dir(container_dir)
    if not base.is_dir():
        return
    for entry in sorted(base.iterdir()):
        mounts.unmount(entry)
        if mounts.is_mounted(entry):
            raise Internal(f"idmapped staging mount {entry} is still mounted")
        _remove_entry(entry)
    with contextlib.suppress(FileNotFoundError):
        base.rmdir()
    log.debug("idmapped staging mounts released", extra={"container_id": container_dir.name})


def _remove_entry(entry: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if entry.is_dir() and not entry.is_symlink():
            entry.rmdir()
        else:
            entry.unlink()


def remove_dir(container_dir: Path) -> None:
    """Remove a container dir: its staging mounts are released first (and it stays if one cannot be).
    The writable layer in it may be any tree a container could make (sandbox/trees.py); RemoveFailed says
    what could not go."""
    release(container_dir)
    trees.remove_tree(container_dir)
