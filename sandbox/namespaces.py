"""Pinned pod namespaces: NET, IPC and UTS created once per pod and kept alive by bind mounts.

Containers of the pod join them by path (``linux.namespaces[].path`` in the OCI spec), so the pod needs
no process of its own to hold them. A short-lived thread of the daemon's own unshares the wanted kinds
(NET, IPC and UTS are per thread, so only that thread moves), sets the hostname in the new UTS namespace
and bind-mounts its /proc/thread-self/ns/<kind> onto each pin, then ends: about a millisecond where
running ``unshare --net=F --ipc=F --uts=F hostname NAME`` cost 3-8 ms (a fork and two execs, more under
load), on the path of every RunPodSandbox.

Release is ``umount`` AND ``rm`` of each pin: a mount namespace created meanwhile keeps its own copy of
the bind mount (and with it the netns and its veth) until the file itself is deleted. Both steps are
idempotent, so a release can be repeated after a crash.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

from calyx_base.errors import Internal
from sandbox import mounts
from sandbox.libc import LIBC, last_error

log = logging.getLogger("sandbox.namespaces")

KINDS = ("net", "ipc", "uts")
PIN_KINDS = (*KINDS, "user")  # every pin a pod may own; the user pin is made by sandbox/userns.py
CLONE_FLAGS = {"net": 0x40000000, "ipc": 0x08000000, "uts": 0x04000000}  # CLONE_NEWNET, NEWIPC, NEWUTS


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

    On failure every pin made so far is released before the error propagates. (``timeout`` is kept for
    callers: nothing here waits on another program any more.)
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
        _pin_on_own_thread(pins, hostname, pod_id)
        for kind, path in pins.items():
            if not is_pinned(path):
                raise Internal(f"{kind} namespace of pod was not pinned at {path}", pod_id)
    except BaseException:
        for path in pins.values():
            release(path)
        raise
    return pins


def _pin_on_own_thread(pins: dict[str, Path], hostname: str, pod_id: str) -> None:
    """Unshare the kinds of ``pins`` on a new thread, set ``hostname`` in its UTS namespace if it has a
    new one, pin each namespace; the thread ends there (it is never reused, nothing else runs in it)."""
    failure: list[BaseException] = []

    def unshare_and_pin() -> None:
        try:
            flags = 0
            for kind in pins:
                flags |= CLONE_FLAGS[kind]
            if LIBC.unshare(flags) != 0:
                raise Internal(f"cannot create the pod's namespaces: {last_error('unshare', pod_id)}", pod_id)
            if "uts" in pins:
                name = hostname.encode()
                if LIBC.sethostname(name, len(name)) != 0:
                    error = last_error("sethostname", repr(hostname))
                    raise Internal(f"cannot set the pod's hostname: {error}", pod_id)
            for kind, path in pins.items():
                bind_pin(f"/proc/thread-self/ns/{kind}", path)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=unshare_and_pin, name="pin-namespaces", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]


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
