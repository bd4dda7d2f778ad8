"""A pod's user namespace, with the pod's NET/IPC/UTS namespaces owned by it, all pinned by bind mounts.

Why not ``unshare --user=PIN --map-users=...``: util-linux 2.38 writes the maps through shadow's
``newuidmap``, which only allows ranges listed in /etc/subuid (measured here: "uid range ... not
allowed"). So a short-lived holder ``unshare --user --net --ipc --uts cat`` creates the namespaces in
one unshare(2) call (which makes the user namespace their owner, so sysfs and mqueue can be mounted in
the pod's containers), Calyx writes ``/proc/<holder>/uid_map`` and ``gid_map`` itself (as root of the
parent namespace any range may be mapped), bind-mounts each ``/proc/<holder>/ns/<kind>`` on its pin and
sets the hostname with ``nsenter --uts``. The holder reads its stdin: closing the pipe ends it, and so
does the daemon's death, so a crash leaves at most pins (released by recovery like any other pin).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calyx_base import failpoints, proc
from calyx_base.errors import Internal
from sandbox import namespaces


@dataclass(frozen=True)
class IdMap:
    """One ``container_id host_id length`` line of a uid_map or gid_map."""

    container_id: int
    host_id: int
    length: int

    def line(self) -> str:
        return f"{self.container_id} {self.host_id} {self.length}\n"

    def to_oci(self) -> dict[str, int]:
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.length}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdMap:
        return cls(int(data["container_id"]), int(data["host_id"]), int(data["length"]))

    def host_of(self, container_id: int) -> int:
        """The host id that ``container_id`` maps to (it must be inside the range)."""
        return self.host_id + container_id - self.container_id


def pin_path(run_root: Path, pod_id: str) -> Path:
    return namespaces.pin_path(run_root, "user", pod_id)


def _ns_inode(pid: int | str, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def create(
    run_root: Path,
    pod_id: str,
    uid_map: IdMap,
    gid_map: IdMap,
    kinds: list[str],
    hostname: str,
    timeout: float = 10.0,
) -> dict[str, Path]:
    """Create the pod's user namespace and the ``kinds`` namespaces it owns; return kind -> pin.

    On failure every pin made so far is released before the error propagates.
    """
    unknown = set(kinds) - set(namespaces.KINDS)
    if unknown:
        raise ValueError(f"unknown namespace kinds {sorted(unknown)}")
    pins: dict[str, Path] = {"user": pin_path(run_root, pod_id)}
    for kind in kinds:
        pins[kind] = namespaces.pin_path(run_root, kind, pod_id)
    holder: subprocess.Popen[bytes] | None = None
    try:
        for path in pins.values():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=True)  # a bind mount needs an existing target
        holder = subprocess.Popen(
            ["unshare", "--user", *(f"--{kind}" for kind in kinds), "cat"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        own = _ns_inode("self", "user")
        deadline = time.monotonic() + timeout
        while _ns_inode(holder.pid, "user") in (own, None):
            if holder.poll() is not None:
                raise Internal(f"user namespace holder exited with {holder.returncode}", pod_id)
            if time.monotonic() > deadline:
                raise Internal(f"user namespace holder did not unshare within {timeout:g}s", pod_id)
            time.sleep(0.001)
        Path(f"/proc/{holder.pid}/uid_map").write_text(uid_map.line())
        Path(f"/proc/{holder.pid}/gid_map").write_text(gid_map.line())
        for kind, path in pins.items():
            namespaces.bind_pin(f"/proc/{holder.pid}/ns/{kind}", path)
            if not namespaces.is_pinned(path):
                raise Internal(f"{kind} namespace of pod was not pinned at {path}", pod_id)
            if kind == "user":
                failpoints.hit("pod.after_userns_pin", pod_id=pod_id)  # the others not pinned yet
        if "uts" in pins:
            # Root of the host user namespace holds CAP_SYS_ADMIN over every child namespace.
            proc.run(["nsenter", f"--uts={pins['uts']}", "hostname", hostname], timeout, object_id=pod_id)
    except BaseException:
        for path in pins.values():
            namespaces.release(path)
        raise
    finally:
        if holder is not None:
            with contextlib.suppress(OSError):
                if holder.stdin is not None:
                    holder.stdin.close()
            try:
                holder.wait(timeout)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()
    return pins
