"""/dev/shm shared by the containers of a pod, as their shared IPC namespace implies.

A pod with an IPC namespace of its own gets one tmpfs under ``<run_root>/shm/<pod-id>``, made when its
first container is created and unmounted with its containers; a pod on the host's IPC namespace sees
the host's /dev/shm. Containers bind-mount it on /dev/shm. The tmpfs is 1777 (any user of the pod
writes it), so ``<run_root>/shm`` is root's alone: no other host user reaches it (cri/statedirs.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sandbox import mounts

SHM_OPTIONS = "mode=1777,size=67108864"
HOST_SHM = "/dev/shm"


def shm_dir(run_root: Path, pod_id: str) -> Path:
    return run_root / "shm" / pod_id


def ensure(run_root: Path, pod_id: str) -> Path:
    """The pod's tmpfs, mounted now if it is not yet."""
    target = shm_dir(run_root, pod_id)
    target.mkdir(parents=True, exist_ok=True)
    if not mounts.is_mounted(target):
        flags = mounts.MS_NOSUID | mounts.MS_NODEV | mounts.MS_NOEXEC
        mounts.mount_fs("shm", target, "tmpfs", flags, SHM_OPTIONS)
    return target


def release(run_root: Path, pod_id: str) -> None:
    target = shm_dir(run_root, pod_id)
    mounts.unmount(target)
    with contextlib.suppress(FileNotFoundError, OSError):
        target.rmdir()


def pod_ids(run_root: Path) -> list[str]:
    """The pods that have a /dev/shm here (recovery releases those of pods that are gone)."""
    base = run_root / "shm"
    return [entry.name for entry in base.iterdir()] if base.is_dir() else []
