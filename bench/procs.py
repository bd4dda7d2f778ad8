"""Memory of processes from /proc: a daemon's RSS, and the helper processes a runtime starts per pod.

RSS counts shared pages (libc, the shim's Go runtime text) once per process; PSS splits them between
the processes sharing them, so it is the fairer figure for 100 copies of one helper. Both are kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    comm: str
    cmdline: tuple[str, ...]
    start: int  # start time in clock ticks since boot: a (pid, start) pair never repeats
    ppid: int


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def rss_kb(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, None if it is gone."""
    return _status_kb(pid, "VmRSS")


def pss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # comm is in parentheses and may contain spaces; the fields after the last ')' are fixed.
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    cmdline = tuple(p.decode(errors="replace") for p in raw.split(b"\0") if p)
    return Proc(pid, comm, cmdline, int(fields[19]), int(fields[1]))


def snapshot() -> dict[tuple[int, int], Proc]:
    """Every process on the machine, keyed by (pid, start time)."""
    procs: dict[tuple[int, int], Proc] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            proc = read_proc(int(entry))
            if proc is not None and proc.cmdline:  # kernel threads have no cmdline
                procs[(proc.pid, proc.start)] = proc
    return procs


def new_since(before: dict[tuple[int, int], Proc]) -> list[Proc]:
    return [p for key, p in snapshot().items() if key not in before]


def cgroup_paths(pid: int) -> list[str]:
    try:
        return [line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
    except (OSError, IndexError):
        return []


def owned(new: list[Proc], markers: list[str], cgroup_root: str, parent: int | None = None) -> list[Proc]:
    """The processes of ``new`` that belong to one runtime's run: their command line names one of
    ``markers`` (its private dirs or socket), or they sit in the run's cgroup root, or their parent
    does (catatonit under unshare), or ``parent`` (the daemon) does. Other tests may run on the same
    machine meanwhile: their processes must not be counted."""
    mine: dict[int, Proc] = {}
    for p in new:
        line = " ".join(p.cmdline)
        if any(m in line for m in markers) or any(
            c == cgroup_root or c.startswith(cgroup_root + "/") for c in cgroup_paths(p.pid)
        ):
            mine[p.pid] = p
    grew = True
    while grew:
        grew = False
        for p in new:
            if p.pid not in mine and (p.ppid in mine or (parent is not None and p.ppid == parent)):
                mine[p.pid] = p
                grew = True
    return list(mine.values())


@dataclass
class MemorySum:
    processes: int
    rss_kb: int
    pss_kb: int
    by_comm: dict[str, int]


def memory_of(procs: list[Proc]) -> MemorySum:
    rss = pss = 0
    count = 0
    by_comm: dict[str, int] = {}
    for p in procs:
        r, s = rss_kb(p.pid), pss_kb(p.pid)
        if r is None:
            continue
        count += 1
        rss += r
        pss += s or 0
        by_comm[p.comm] = by_comm.get(p.comm, 0) + 1
    return MemorySum(count, rss, pss, by_comm)


def pid_of_socket(path: str) -> int | None:
    """The PID of the process listening on unix socket ``path`` (for an endpoint we did not start)."""
    inodes: set[str] = set()
    try:
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[7] == path and parts[5] == "01":  # listening
                inodes.add(parts[6])
    except OSError:
        return None
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(f"{fd_dir}/{fd}") in targets:
                        return int(entry)
                except OSError:
                    continue
        except OSError:
            continue
    return None
