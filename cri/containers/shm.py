"""/dev/shm shared by the containers of a pod, as their shared IPC namespace implies.

A pod with an IPC namespace of its own gets one tmpfs under ``<run_root>/shm/<pod-id>``, made when its
first container is created and unmounted with its containers; a pod on the host's IPC namespace sees
the host's /dev/shm. Containers bind-mount it on /dev/shm. The tmpfs is 1777 (any user of the pod
writes it), so ``<run_root>/shm`` is root's alone: no other host user reaches it (cri/statedirs.py).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from cri.containers import rootfs

log = logging.getLogger("cri.containers.shm")

SHM_OPTIONS = "mode=1777,size=67108864"
HOST_SHM = "/dev/shm"
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8


def shm_dir(run_root: Path, pod_id: str) -> Path:
    return run_root / "shm" / pod_id


def source_for(run_root: Path, pod: Any) -> str:
    """The host dir to bind on the container's /dev/shm (made now if it is the pod's own)."""
    if not pod.ipc_ns_path:
        return HOST_SHM
    target = shm_dir(run_root, pod.id)
    target.mkdir(parents=True, exist_ok=True)
    if not rootfs.is_mounted(target):
        rootfs.mount_fs("shm", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, SHM_OPTIONS)
    return str(target)


def release(run_root: Path, pod_id: str) -> None:
    target = shm_dir(run_root, pod_id)
    rootfs.unmount(target)
    with contextlib.suppress(FileNotFoundError, OSError):
        target.rmdir()


def orphans(run_root: Path, pods: Any) -> list[str]:
    """Ids of pods that no longer exist (removed while the daemon was down) but keep their shm here,
    for ``release``."""
    base = run_root / "shm"
    if not base.is_dir() or pods is None:
        return []
    found = []
    for entry in base.iterdir():
        try:
            pods.get(entry.name)
        except Exception:
            log.info("releasing shm of a removed pod", extra={"pod_id": entry.name})
            found.append(entry.name)
    return found
