"""What tests read from cgroups, for both layouts: cgroup v1 (a hierarchy per controller, as on the CI
hosts: /sys/fs/cgroup/<controller>/<path>) and cgroup v2 (one tree, /sys/fs/cgroup/<path>, as on a
systemd node). A test names a cgroup by its path and a value by what it means; this module knows where
each layout keeps it and how each words it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def unified() -> bool:
    """Whether /sys/fs/cgroup is one cgroup2 tree (v2) rather than a dir of v1 hierarchies."""
    return (ROOT / "cgroup.controllers").exists()


def controller_dir(controller: str, path: str) -> Path:
    """The dir of cgroup ``path`` that holds ``controller``'s files ("memory", "cpu", "pids"...)."""
    return ROOT / path.strip("/") if unified() else ROOT / controller / path.strip("/")


def dirs(path: str) -> list[Path]:
    """Every existing dir of cgroup ``path``: one per v1 hierarchy (co-mounted ones once), or the one."""
    if unified():
        candidates = [ROOT / path.strip("/")]
    else:
        hierarchies = [h for h in sorted(ROOT.iterdir()) if h.is_dir() and not h.is_symlink()]
        candidates = [h / path.strip("/") for h in hierarchies]
    return [d for d in candidates if d.is_dir()]


def children(parent: str) -> list[Path]:
    """The dirs of every cgroup directly below ``parent``, in every hierarchy."""
    return [child for d in dirs(parent) for child in d.iterdir() if child.is_dir()]


def procs(path: str) -> list[int]:
    """The processes in cgroup ``path`` (v1: its pids hierarchy's, where runc puts every process)."""
    text = (controller_dir("pids", path) / "cgroup.procs").read_text()
    return [int(p) for p in text.split()]


def of_process(pid: int | str, controller: str = "memory") -> str:
    """The cgroup path of process ``pid`` (``self`` too) in ``controller``'s hierarchy, as
    /proc/PID/cgroup gives it (inside a private cgroup namespace: relative to its root)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, names, path = line.split(":", 2)
        if (unified() and names == "") or controller in names.split(","):
            return path
    raise LookupError(f"process {pid} is in no {controller} hierarchy")


def memory_limit(path: str) -> int | None:
    """The memory limit in bytes (memory.limit_in_bytes, memory.max); None: none."""
    if unified():
        text = (controller_dir("memory", path) / "memory.max").read_text().strip()
        return None if text == "max" else int(text)
    value = int((controller_dir("memory", path) / "memory.limit_in_bytes").read_text())
    return None if value >= 1 << 62 else value


def cpu_quota(path: str) -> tuple[int | None, int]:
    """(quota, period) in microseconds (cpu.cfs_quota_us and cpu.cfs_period_us, or cpu.max); None: none."""
    if unified():
        quota, period = (controller_dir("cpu", path) / "cpu.max").read_text().split()
        return (None if quota == "max" else int(quota)), int(period)
    cpu = controller_dir("cpu", path)
    quota_us = int((cpu / "cpu.cfs_quota_us").read_text())
    return (None if quota_us < 0 else quota_us), int((cpu / "cpu.cfs_period_us").read_text())


# CPU shares (v1's cpu.shares, what CRI asks in) as v2's cpu.weight, by the conversion runc, crun and
# systemd use (1 + (shares - 2) * 9999 / 262142): a fact of those tools, not Calyx's code.
SHARES_AS_WEIGHT = {2: 1, 256: 10, 300: 12, 384: 15, 512: 20, 600: 23, 768: 30, 1024: 39}


def cpu_share(path: str) -> int:
    """v1: cpu.shares; v2: cpu.weight. Compare with ``shares(n)``."""
    name = "cpu.weight" if unified() else "cpu.shares"
    return int((controller_dir("cpu", path) / name).read_text())


def shares(n: int) -> int:
    """What cpu_share reads for ``n`` CPU shares in this layout."""
    return SHARES_AS_WEIGHT[n] if unified() else n


def pids_max(path: str) -> str:
    return (controller_dir("pids", path) / "pids.max").read_text().strip()


def cpuset_cpus(path: str) -> str:
    """The CPUs the cgroup may use: v2 leaves cpuset.cpus empty until written (the effective set is
    cpuset.cpus.effective, inherited); v1 copies the parent's into cpuset.cpus."""
    directory = controller_dir("cpuset", path)
    if unified() and not (directory / "cpuset.cpus").read_text().strip():
        return (directory / "cpuset.cpus.effective").read_text().strip()
    return (directory / "cpuset.cpus").read_text().strip()
