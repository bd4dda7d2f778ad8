"""The last check after a test's daemons are stopped: nothing they made may outlive the test.

A test cleans up through the CRI (its fixtures stop and remove every pod). What is still on the host
after that, and after the daemon stopped, is a leak: a conmon or container process, a PID namespace
holder, a pinned namespace, a rootfs or shm mount, a container cgroup. ``reap`` finds what is left of a
daemon whose state dirs are under ``base``, removes it (processes by PID after checking they are that
daemon's, mounts, cgroups) so that one failing test does not leave pods running on the machine, and
returns what it found so that the test fails and names the leak.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import time
from pathlib import Path

from tests import cgroup_files

MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def reap(base: Path) -> list[str]:
    """Remove and describe what the daemon with its state under ``base`` left running or mounted."""
    found: list[str] = []
    killed: list[int] = []
    containers = _containers(base)
    for cid, state in containers.items():
        for pid in _container_pids(cid, state):
            found.append(f"process {pid} of container {cid[:12]}: {_cmdline(pid)[:80]}")
            _kill(pid)
            killed.append(pid)
    for pid in _processes_naming(base):
        found.append(f"process {pid}: {_cmdline(pid)[:120]}")
        for child in _children(pid):
            _kill(child)
            killed.append(child)
        _kill(pid)
        killed.append(pid)
    _wait_gone(killed)
    for mountpoint in _mounts_under(base):
        found.append(f"mount {mountpoint}")
        _libc.umount2(mountpoint.encode(), MNT_DETACH)
    for cid, state in containers.items():
        for directory in _cgroup_dirs(cid, state):
            found.append(f"cgroup {directory}")
            for sub in sorted(directory.rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir():
                    _rmdir(sub)
            _rmdir(directory)
    return found


def _containers(base: Path) -> dict[str, dict[str, object]]:
    """Container id -> its state.json (what the daemon kept beside each container)."""
    out: dict[str, dict[str, object]] = {}
    for state_file in base.glob("lib/containers/*/state.json"):
        try:
            out[state_file.parent.name] = json.loads(state_file.read_text())
        except (OSError, ValueError):
            out[state_file.parent.name] = {}
    for bundle in base.glob("lib/containers/*"):
        out.setdefault(bundle.name, {})
    return out


def _container_pids(cid: str, state: dict[str, object]) -> list[int]:
    pids: set[int] = set()
    for directory in _cgroup_dirs(cid, state):
        try:
            pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        except (OSError, ValueError):
            continue
    return sorted(pids)


def _cgroup_dirs(cid: str, state: dict[str, object]) -> list[Path]:
    """The container's and its conmon's cgroupfs dirs (the systemd driver's live in the test systemd,
    which is killed with everything in it)."""
    parent = str(state.get("cgroup_parent") or "/calyx").strip("/")
    if parent.endswith(".slice"):
        return []
    dirs = []
    for name in (f"calyx-{cid}", f"calyx-conmon-{cid}"):
        dirs += cgroup_files.dirs(f"{parent}/{name}")
    return dirs


def _processes_naming(base: Path) -> list[int]:
    """Processes (not this one) whose command line names a path under ``base``: conmon, PID holders."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me and str(base) in _cmdline(int(entry.name)):
            found.append(int(entry.name))
    return found


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _wait_gone(pids: list[int], seconds: float = 5.0) -> None:
    """Killed processes release their mounts and cgroups once they are gone (zombies do not count)."""
    deadline = time.monotonic() + seconds
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                break
            if stat[stat.rfind(")") + 2 :].startswith(("Z", "X")):
                break
            time.sleep(0.01)


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(prefix):
            points.append(point)
    return sorted(set(points), key=lambda p: -p.count("/"))


def _rmdir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()
