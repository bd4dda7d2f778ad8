"""Device nodes in a pod with a user namespace of its own: whether any process of the pod could open one.

runc 1.1 cannot create device nodes in a user namespace, so such a container gets a host node as it is
(runc binds it for a CDI device, Calyx for a CRI device): its mode and owner are the host's. Shared by
the CRI's devices (cri/containers/devices.py) and CDI's (cri/containers/cdi/inject.py), so that both
refuse the same nodes with the same words.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from calyx_base.errors import FailedPrecondition


@dataclass(frozen=True)
class PodIds:
    """The host ids the pod's user namespace maps: (first host id, count) ranges."""

    uids: tuple[tuple[int, int], ...] = ()
    gids: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of_oci(cls, uid_maps: Iterable[Mapping[str, Any]], gid_maps: Iterable[Mapping[str, Any]]) -> PodIds:
        """From OCI ``linux.uidMappings`` and ``linux.gidMappings``."""

        def ranges(maps: Iterable[Mapping[str, Any]]) -> tuple[tuple[int, int], ...]:
            return tuple((int(m["hostID"]), int(m["size"])) for m in maps)

        return cls(ranges(uid_maps), ranges(gid_maps))

    @staticmethod
    def _maps(ranges: tuple[tuple[int, int], ...], host_id: int) -> bool:
        return any(first <= host_id < first + count for first, count in ranges)

    def maps_owner(self, st: os.stat_result) -> bool:
        """Whether the host owner or group of a file is an id of the pod's user namespace."""
        return self._maps(self.uids, st.st_uid) or self._maps(self.gids, st.st_gid)


def check_openable(st: os.stat_result, permissions: str, ids: PodIds, where: str, why: str) -> None:
    """Refuse (FAILED_PRECONDITION: ``where``, ``why``) a host node no process of the pod could open as
    ``permissions`` (the cgroup rule's r, w, m; empty is rwm) allow. The host's root owns most nodes;
    unmapped in the pod, its owner and group match no process there and no capability overrides their
    modes, so only the bits for others count. A node one of the pod's ids owns follows its mode as usual."""
    if permissions == "none" or ids.maps_owner(st):
        return
    needed = "".join(a for a in (permissions or "rw") if a in "rw")
    granted = {"r": stat.S_IROTH, "w": stat.S_IWOTH}
    if all(st.st_mode & granted[a] for a in needed):
        return
    mode = stat.S_IMODE(st.st_mode)
    raise FailedPrecondition(
        f"{where}: {why}, whose owner (host uid {st.st_uid}, gid {st.st_gid}) the pod's user namespace"
        f" does not map, and its mode {mode:04o} does not let others {needed}: no process of the pod"
        " could open it; run the pod without a user namespace or give others that access on the host"
    )
