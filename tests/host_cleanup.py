"""Undo what a runtime left on the host after a run: mounts under its dirs, cgroups under the run's
cgroup root, its CNI bridge and iptables chains, and helper processes tied to its socket.

Everything is found by names unique to this run (a temp dir, a cgroup root, a bridge name), never
by a broad pattern, so other runtimes on the machine are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")


def mounts_under(prefix: Path) -> list[str]:
    """Mount points at or below ``prefix``, deepest first."""
    found: list[str] = []
    text = Path("/proc/self/mountinfo").read_text()
    for line in text.splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == str(prefix) or point.startswith(str(prefix) + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_under(prefix: Path) -> int:
    count = 0
    for _ in range(3):  # stacked mounts: repeat until none is left
        points = mounts_under(prefix)
        if not points:
            break
        for point in points:
            if subprocess.run(["umount", "-l", point], capture_output=True, timeout=30).returncode == 0:
                count += 1
    return count


def cgroup_dirs(name: str) -> list[Path]:
    """``<hierarchy>/<name>`` in every mounted hierarchy (cgroup v1 and the v2 unified mount)."""
    dirs = []
    for hierarchy in CGROUP_FS.iterdir():
        candidate = hierarchy / name
        if candidate.is_dir():
            dirs.append(candidate)
    unified = CGROUP_FS / "unified" / name
    if unified.is_dir() and unified not in dirs:
        dirs.append(unified)
    return dirs


def remove_cgroups(name: str) -> list[str]:
    """rmdir the cgroup tree ``name`` bottom-up in every hierarchy; returns what could not go."""
    left: list[str] = []
    pids: set[int] = set()
    for top in cgroup_dirs(name):
        for root, _, _ in os.walk(top):
            try:
                pids.update(int(p) for p in Path(root, "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                continue
    if pids:  # processes still in the run's cgroups are the run's own leftovers
        kill_pids(sorted(pids), grace=0)
        time.sleep(0.2)
    for top in cgroup_dirs(name):
        for root, subdirs, _ in sorted(os.walk(top), key=lambda w: w[0].count("/"), reverse=True):
            del subdirs
            try:
                os.rmdir(root)
            except OSError:
                left.append(root)
    return left


def delete_link(name: str) -> None:
    if Path(f"/sys/class/net/{name}").exists():
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (a path unique to this run)."""
    pids = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry))
    return pids


def kill_pids(pids: list[int], grace: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_iptables_rules(comment: str) -> None:
    """Delete the nat-table rules whose comment names this run's network (the CNI bridge plugin's
    masquerade rules carry the network name), then the chains they jumped to."""
    out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return
    chains: set[str] = set()
    for line in out.stdout.splitlines():
        if line.startswith("-A ") and comment in line:
            parts = shlex.split(line)
            if "-j" in parts:
                chains.add(parts[parts.index("-j") + 1])
            subprocess.run(["iptables", "-t", "nat", "-D", *parts[1:]], capture_output=True, timeout=30)
    for chain in chains:
        if chain.startswith("CNI-"):
            subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True, timeout=30)
            subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True, timeout=30)
