"""Pinned pod namespaces: NET, IPC and UTS created once per pod and kept alive by bind mounts.

Containers of the pod join them by path (``linux.namespaces[].path`` in the OCI spec), so the pod needs
no process of its own to hold them. One ``unshare --net=F --ipc=F --uts=F hostname NAME`` creates and pins
all wanted kinds in a few milliseconds and sets the hostname inside the new UTS namespace.

Release is ``umount`` AND ``rm`` of each pin: a mount namespace created meanwhile keeps its own copy of
the bind mount (and with it the netns and its veth) until the file itself is deleted. Both steps are
idempotent, so a release can be repeated after a crash.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from calyx_base import proc
from calyx_base.errors import Internal
from sandbox import mounts

log = logging.getLogger("sandbox.namespaces")

KINDS = ("net", "ipc", "uts")
PIN_KINDS = (*KINDS, "user")  # every pin a pod may own; the user pin is made by sandbox/userns.py


def pin_dir(run_root: Path, kind: str) -> Path:
    return run_root / "ns" / kind


def pin_path(run_root: Path, kind: str, pod_id: str) -> Path:
    """Where the ``kind`` namespace of pod ``pod_id`` is pinned."""
    return pin_dir(run_root, kind) / pod_id


def is_pinned(path: Path) -> bool:
    """True when ``path`` is a mounted namespace file (a pin that runc can join)."""
    return mounts.is_mount_point(path)


def create(
    run_root: Path, pod_id: str, kinds: list[str], hostname: str, timeout: float = 10.0
) -> dict[str, Path]:
    """Create and pin new namespaces of ``kinds`` for ``pod_id``; return kind -> pin path.

    On failure every pin made so far is released before the error propagates.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown namespace kinds {sorted(unknown)}")
    if not kinds:
        return {}
    pins: dict[str, Path] = {}
    try:
        for kind in kinds:
            path = pin_path(run_root, kind, pod_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=True)  # a bind mount needs an existing target
            pins[kind] = path
        argv = ["unshare", *(f"--{kind}={pins[kind]}" for kind in kinds)]
        # With a new UTS namespace, set the pod's hostname in it; otherwise just pin and exit.
        argv += ["hostname", hostname] if "uts" in pins else ["true"]
        proc.run(argv, timeout, object_id=pod_id)
        for kind, path in pins.items():
            if not is_pinned(path):
                raise Internal(f"{kind} namespace of pod was not pinned at {path}", pod_id)
    except BaseException:
        for path in pins.values():
            release(path)
        raise
    return pins


def bind_pin(source: str, target: Path) -> None:
    """Pin the namespace file ``source`` (e.g. /proc/PID/ns/net) at ``target`` (an existing file)."""
    try:
        mounts.bind(source, target)
    except OSError as exc:
        raise Internal(f"cannot pin {source} at {target}: {exc.strerror}") from None


def release(path: Path) -> None:
    """Unmount and delete one pin; a missing or unmounted pin is fine."""
    mounts.unmount(path)  # stacked mounts too (a pin made twice)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def release_pod(run_root: Path, pod_id: str) -> None:
    """Release every pin of ``pod_id`` (net, ipc, uts, user) that exists; the user pin goes last."""
    for kind in PIN_KINDS:
        release(pin_path(run_root, kind, pod_id))


def leftover_pins(run_root: Path) -> dict[str, list[str]]:
    """kind -> pod ids that have a pin file; recovery compares this with the pods it knows."""
    found: dict[str, list[str]] = {}
    for kind in PIN_KINDS:
        directory = pin_dir(run_root, kind)
        found[kind] = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    return found
