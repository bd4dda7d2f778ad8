"""Fixtures for the metrics readers: cgroups and network namespaces the tests make and remove."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.metrics.workload import Workload

_serial = itertools.count()
# The v1 hierarchies these tests make cgroups in (this machine is cgroup v1 hybrid).
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio")
V1_ROOT = Path("/sys/fs/cgroup")


def _rmdir_when_empty(path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)  # the killed tasks are still leaving the cgroup
    path.rmdir()


@dataclass
class MadeCgroup:
    name: str
    dirs: dict[str, Path]

    def add(self, pid: int) -> None:
        for path in self.dirs.values():
            (path / "cgroup.procs").write_text(str(pid))


class Workloads:
    """Start workload processes; each one is killed (by its PID) before the cgroups are removed."""

    def __init__(self) -> None:
        self.started: list[Workload] = []

    def __call__(self) -> Workload:
        workload = Workload()
        self.started.append(workload)
        return workload

    def stop_all(self) -> None:
        for workload in self.started:
            workload.stop()


@pytest.fixture
def workloads() -> Iterator[Workloads]:
    registry = Workloads()
    yield registry
    registry.stop_all()


@pytest.fixture
def v1_cgroup(workloads: Workloads) -> Iterator[Callable[..., MadeCgroup]]:
    """Make cgroups calyx-mtest-<pid>-<n> in every v1 hierarchy (cpu, cpuacct, memory, pids, blkio);
    removed at teardown, after the workloads in them are killed."""
    made: list[MadeCgroup] = []

    def make(unified: bool = False, **files: str) -> MadeCgroup:
        """``unified``: also the cgroup's directory in the cgroup2 mount (as runc makes on a hybrid host)."""
        name = f"calyx-mtest-{os.getpid()}-{next(_serial)}"
        dirs: dict[str, Path] = {}
        cgroup = MadeCgroup(name, dirs)
        made.append(cgroup)
        for controller in (*V1_CONTROLLERS, "unified") if unified else V1_CONTROLLERS:
            path = V1_ROOT / controller / name
            path.mkdir()
            dirs[controller] = path
        for filename, value in files.items():  # e.g. memory__limit_in_bytes="..." -> memory.limit_in_bytes
            controller = filename.split("__", 1)[0]
            (dirs[controller] / filename.replace("__", ".")).write_text(value)
        return cgroup

    yield make
    workloads.stop_all()
    for cgroup in made:
        for path in cgroup.dirs.values():
            _rmdir_when_empty(path)


@pytest.fixture
def v2_cgroup(workloads: Workloads) -> Iterator[Callable[[], Path]]:
    """A cgroup in the unified (v2) hierarchy; on this hybrid host it has no controllers, but the core
    files (cpu.stat usage, cgroup.procs) are real."""
    made: list[Path] = []
    unified = V1_ROOT / "unified"
    if not (unified / "cgroup.controllers").exists():
        pytest.skip("no cgroup2 hierarchy mounted")

    def make() -> Path:
        path = unified / f"calyx-mtest-{os.getpid()}-{next(_serial)}"
        path.mkdir()
        made.append(path)
        return path

    yield make
    workloads.stop_all()
    for path in made:
        _rmdir_when_empty(path)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@dataclass
class NetnsPair:
    """Two namespaces joined by a veth pair: ``pod`` (its end named eth0, 10.254.<n>.1) and ``peer``
    (10.254.<n>.2). Traffic between them never leaves the two namespaces."""

    pod: str
    peer: str
    pod_ip: str
    peer_ip: str

    @property
    def pod_path(self) -> str:
        return f"/run/netns/{self.pod}"

    def send_udp(self, count: int, size: int) -> None:
        """``count`` datagrams of ``size`` payload bytes from the peer to the pod's address."""
        script = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for _ in range({count}): s.sendto(b'x' * {size}, ('{self.pod_ip}', 9))\n"
        )
        subprocess.run(["ip", "netns", "exec", self.peer, "python3", "-c", script], check=True, timeout=60)


@pytest.fixture
def netns_pair() -> Iterator[Callable[[], NetnsPair]]:
    made: list[NetnsPair] = []

    def make() -> NetnsPair:
        n = next(_serial)
        tag = f"{os.getpid() % 100000}x{n}"
        pair = NetnsPair(f"cxm-{tag}-pod", f"cxm-{tag}-peer", f"10.254.{n % 250}.1", f"10.254.{n % 250}.2")
        made.append(pair)
        ip("netns", "add", pair.pod)
        ip("netns", "add", pair.peer)
        host_a, host_b = f"cxma{tag}"[:15], f"cxmb{tag}"[:15]
        ip("link", "add", host_a, "type", "veth", "peer", "name", host_b)
        ip("link", "set", host_a, "netns", pair.pod)
        ip("link", "set", host_b, "netns", pair.peer)
        ip("-n", pair.pod, "link", "set", host_a, "name", "eth0")
        ip("-n", pair.pod, "addr", "add", f"{pair.pod_ip}/30", "dev", "eth0")
        ip("-n", pair.peer, "addr", "add", f"{pair.peer_ip}/30", "dev", host_b)
        for ns, dev in ((pair.pod, "eth0"), (pair.pod, "lo"), (pair.peer, host_b), (pair.peer, "lo")):
            ip("-n", ns, "link", "set", dev, "up")
        return pair

    yield make
    for pair in made:
        for ns in (pair.pod, pair.peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
