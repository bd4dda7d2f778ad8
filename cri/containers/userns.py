"""What a container of a pod with its own user namespace needs: the pod's pin and id mappings.

The pod's user namespace is made once per pod (sandbox/userns.py); every container joins it by path.
runc is still given the mappings with the path: runc 1.1.5 refuses a joined user namespace without them
(measured: "User namespaces enabled, but no uid mappings found.") and computes the host ids of the
container's root from them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from calyx_base.errors import FailedPrecondition, InvalidArgument
from cri import enums
from cri.api import api_pb2 as pb
from cri.containers.deps import PodView
from sandbox.userns import IdMap


def pod_user_ns(pod: PodView) -> str | None:
    """The pinned user namespace of ``pod``, or None when it runs in the host's."""
    return pod.user_ns_path


def mappings(pod: PodView) -> tuple[IdMap, IdMap] | None:
    """(uid map, gid map) of the pod's user namespace, or None without one."""
    if not pod_user_ns(pod):
        return None
    userns = (pod.namespace_options or {}).get("userns") or {}
    return IdMap.from_dict(userns["uids"][0]), IdMap.from_dict(userns["gids"][0])


def check_request(pod: PodView, requested: Any) -> None:
    """The container's own ``userns_options`` (kubelet repeats the pod's) must agree with the pod's:
    a container cannot have a user namespace of its own, nor leave or change the pod's."""
    if requested is None or not requested.ListFields():
        return
    maps = mappings(pod)
    if requested.mode == pb.NODE:
        if maps is not None:
            raise InvalidArgument("container asks for the host's user namespace in a pod that has its own")
        return
    if requested.mode != pb.POD:
        raise InvalidArgument(
            f"container userns_options.mode {enums.shown(pb.NamespaceMode, requested.mode)} is not supported"
        )
    if maps is None:
        raise InvalidArgument("container asks for a pod user namespace, but the pod has none")
    wanted = (
        [IdMap(m.container_id, m.host_id, m.length) for m in requested.uids],
        [IdMap(m.container_id, m.host_id, m.length) for m in requested.gids],
    )
    if (wanted[0] or wanted[1]) and wanted != ([maps[0]], [maps[1]]):
        raise InvalidArgument("container userns_options mappings differ from the pod's")


def root_owner(pod: PodView) -> tuple[int, int] | None:
    """Host (uid, gid) of the container's root user in the pod's user namespace, or None."""
    maps = mappings(pod)
    if maps is None:
        return None
    return maps[0].host_of(0), maps[1].host_of(0)


def check_reachable(paths: list[Path], owner: tuple[int, int]) -> None:
    """Refuse clearly when the container's root (``owner``, an unprivileged host uid and gid) cannot
    reach one of ``paths``: runc mounts the rootfs and the bind sources from inside the user namespace,
    so every dir above them must be searchable by that uid or gid. Calyx's own dirs are made so (see
    cri/statedirs.py: the container dir lets the root's group through, and the pod's files and /dev/shm
    are staged in it); the modes of an operator's or kubelet's dirs are not ours to change."""
    uid, gid = owner
    for path in paths:
        for directory in reversed(path.parents):
            try:
                st = directory.stat()
            except OSError:
                continue
            if not _searchable(st, uid, gid):
                raise FailedPrecondition(
                    f"{directory} is not searchable by the container's root (host uid {uid}, gid {gid}): "
                    f"a container in a pod user namespace cannot reach {path} below it (give others o+x)"
                )


def _searchable(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def give_to_root(upper: Path, rootfs: Path, owner: tuple[int, int]) -> None:
    """Hand what Calyx made in a fresh upper dir (working dir, image volume dirs, mount points) to the
    container's root. At create time the upper dir holds nothing else: copy-ups through the idmapped
    layers already carry mapped ids, so an entry owned by host root there is one Calyx made. The chown
    goes through the mounted ``rootfs``: overlayfs keeps its own copy of the owner for permission checks
    and a change made in the upper dir behind its back is not seen (measured: EACCES for the new owner).
    """
    made = []
    for directory, dirs, files in os.walk(upper):
        for name in (*dirs, *files):
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if st.st_uid == 0 and st.st_gid == 0:
                made.append(os.path.relpath(path, upper))
    for rel in made:
        os.lchown(rootfs / rel, *owner)
