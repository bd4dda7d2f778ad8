"""The cgroup drivers against the real kernel, a real systemd (tests/systemd_fixture.py) and real runc.

cgroupfs runs on the host's hierarchies; the systemd driver runs inside the test systemd's namespaces
(its D-Bus, its PIDs), and the cgroup files it manages are read from the host side. Every test removes
the cgroups and units it made.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from calyx_base.errors import FailedPrecondition
from cri.api import api_pb2 as pb
from cri.containers.resources import to_oci
from sandbox.cgroups.cgroupfs import CgroupfsDriver
from sandbox.cgroups.hierarchy import Hierarchy, Mode, detect
from sandbox.cgroups.resources import host_page_sizes
from tests import cgroup_files
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import host_network_linux, pod_config, run_pod
from tests.slice_pods import pod_in_a_slice, pod_slice
from tests.systemd_fixture import HostSystemd, NamespacedSystemd

BUSYBOX = Path("/bin/busybox")
V1 = detect().mode.value == "v1"
V2 = not V1


def _files(dirs: dict[str, Path], wanted: list[tuple[str, str]]) -> dict[str, str]:
    return {name: (dirs[controller] / name).read_text().strip() for controller, name in wanted}


V1_FILES = [
    ("cpu", "cpu.shares"),
    ("cpu", "cpu.cfs_quota_us"),
    ("cpu", "cpu.cfs_period_us"),
    ("memory", "memory.limit_in_bytes"),
    ("memory", "memory.memsw.limit_in_bytes"),
    ("pids", "pids.max"),
]


# --- runc bundles -------------------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A runc bundle running ``sleep`` from Debian's busybox-static, its config.json to be completed."""
    if not BUSYBOX.exists() or shutil.which("runc") is None:
        pytest.fail("needs runc and busybox-static (deploy/install.sh --dev)")
    base = tmp_path_factory.mktemp("cgbundle")
    rootfs = base / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in ("sh", "sleep", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    subprocess.run(["runc", "spec", "--bundle", str(base)], check=True, capture_output=True, timeout=30)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def write_spec(bundle: Path, cgroups_path: str, resources: dict[str, Any]) -> Path:
    """Complete the bundle's config.json (``sleep`` in ``cgroups_path`` with ``resources``); the new
    state root for runc (``runc --root``), inside the bundle."""
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["args"] = ["sleep", "3600"]
    spec["process"]["terminal"] = False
    spec["linux"]["cgroupsPath"] = cgroups_path
    spec["linux"]["resources"] = {**spec["linux"].get("resources", {}), **resources}
    (bundle / "config.json").write_text(json.dumps(spec))
    root = bundle / "runc-root"
    root.mkdir()
    return root


def runc_argv(root: Path, *args: str, systemd: bool = False) -> list[str]:
    """runc with its stdio on files: a detached container keeps runc's stdio open forever."""
    flags = ["--systemd-cgroup"] if systemd else []
    log = root / "runc.out"
    cmd = ["runc", *flags, "--root", str(root), *args]
    return ["sh", "-c", f'exec "$@" </dev/null >>{log} 2>&1', "sh", *cmd]


# --- cgroupfs -----------------------------------------------------------------------------------------


def _rmdir_tree(directory: Path) -> None:
    """Remove a tree of (empty) cgroup directories, deepest first: cgroups go with rmdir only."""
    for root, dirs, _ in os.walk(directory, topdown=False):
        for name in dirs:
            os.rmdir(Path(root) / name)
    os.rmdir(directory)


def _kill(*procs: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Kill and reap the test's own processes that are still running."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _container_cgroup(driver: CgroupfsDriver, parent: str) -> str:
    """The pod parent and a new container's cgroup below it, made as runc would: the container's id."""
    cid = secrets.token_hex(32)
    driver.prepare_parent(parent)
    driver.prepare_parent(driver.container_path(cid, parent))
    return cid


def _into_container_cgroup(driver: CgroupfsDriver, cid: str, parent: str, pid: int) -> None:
    """Put ``pid`` into the container's cgroups, as runc would have put the container's processes."""
    for directory in driver.hierarchy.unique_dirs(driver.container_path(cid, parent)):
        (directory / "cgroup.procs").write_text(str(pid))


@pytest.fixture
def cgroupfs_parent() -> Iterator[tuple[CgroupfsDriver, str]]:
    """A cgroupfs driver and a pod parent below a top cgroup of this test; both removed at the end."""
    driver = CgroupfsDriver(pids_limit=64)
    top = f"/calyx-e2e-{secrets.token_hex(4)}"
    yield driver, f"{top}/pod{secrets.token_hex(4)}"
    for directory in driver.hierarchy.unique_dirs(top, named=True):
        if directory.exists():
            _rmdir_tree(directory)


def test_cgroupfs_prepare_parent_makes_dirs_and_remove_parent_cleans(
    cgroupfs_parent: tuple[CgroupfsDriver, str],
) -> None:
    driver, parent = cgroupfs_parent
    driver.prepare_parent(parent)
    dirs = driver.hierarchy.dirs(parent)
    assert dirs and all(d.is_dir() for d in dirs.values())
    if "cpuset" in dirs:  # inherited, not empty (v2: the effective set)
        cpus = cgroup_files.cpuset_cpus(parent) if V2 else (dirs["cpuset"] / "cpuset.cpus").read_text()
        assert cpus.strip()
    driver.prepare_parent(parent)  # idempotent
    assert driver.remove_parent(parent) is True
    assert not any(d.exists() for d in dirs.values())
    assert driver.remove_parent(parent) is True  # nothing left to remove is fine


def test_cgroupfs_remove_parent_keeps_a_busy_parent(cgroupfs_parent: tuple[CgroupfsDriver, str]) -> None:
    driver, parent = cgroupfs_parent
    driver.prepare_parent(parent)
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        driver.place_monitor("f" * 64, parent, sleeper.pid)
        monitor = driver.monitor_path("f" * 64, parent)
        assert cgroup_files.of_process(sleeper.pid, "memory") == monitor
        assert driver.remove_parent(parent) is False
        assert driver.hierarchy.dirs(parent)["memory"].is_dir()
        driver.remove_container("f" * 64, parent)  # kills a monitor still in its cgroup
        assert sleeper.wait(10) == -9
    finally:
        _kill(sleeper)
    assert driver.remove_parent(parent) is True


def test_cgroupfs_pids_and_kill_all_reach_every_process_of_the_container(
    cgroupfs_parent: tuple[CgroupfsDriver, str],
) -> None:
    driver, parent = cgroupfs_parent
    cid = _container_cgroup(driver, parent)
    sleepers = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
    try:
        for sleeper in sleepers:
            _into_container_cgroup(driver, cid, parent, sleeper.pid)
        assert sorted(driver.pids(cid, parent)) == sorted(s.pid for s in sleepers)
        assert driver.kill_all(cid, parent) == 2
        assert [s.wait(10) for s in sleepers] == [-9, -9]
        assert driver.pids(cid, parent) == []
    finally:
        _kill(*sleepers)
    freezer = driver.cgroup_dirs(cid, parent).get("freezer")
    if freezer is not None:
        assert (freezer / "freezer.state").read_text().strip() == "THAWED"
    driver.remove_container(cid, parent)
    assert driver.remove_parent(parent) is True


def _bytes(size: str) -> int:
    return int(size[:-2]) << {"KB": 10, "MB": 20, "GB": 30}[size[-2:]]


@pytest.fixture
def v2_on_the_cgroup2_mount() -> Iterator[Hierarchy]:
    """The host's cgroup2 mount as a v2 hierarchy, with the controllers v1 leaves to it (hugetlb here).

    On a hybrid host this is the only way to drive the v2 code paths against a real kernel. Enabling a
    controller at the root is undone at the end unless it was on before (or someone else still uses it).
    """
    unified = detect().unified
    if unified is None or not unified.controllers:
        pytest.skip("no cgroup2 mount with a usable controller on this host")
    root_control = unified.mountpoint / "cgroup.subtree_control"
    before = set(root_control.read_text().split())
    yield Hierarchy(Mode.V2, {}, unified)
    for controller in sorted(unified.controllers - before):
        with contextlib.suppress(OSError):
            root_control.write_text(f"-{controller}")


def test_cgroupfs_v2_paths_on_the_cgroup2_mount(v2_on_the_cgroup2_mount: Hierarchy) -> None:
    """v2 for real: subtree_control delegation, hugetlb.<size>.max, cgroup.procs, cgroup.freeze."""
    v2 = v2_on_the_cgroup2_mount
    driver = CgroupfsDriver(hierarchy=v2)
    top = f"/calyx-e2e-v2-{secrets.token_hex(4)}"
    parent, cid = f"{top}/pod", secrets.token_hex(32)
    root = v2.unified.mountpoint if v2.unified else Path("/")
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        driver.prepare_parent(parent)
        driver.prepare_parent(driver.container_path(cid, parent))
        for controller in v2.controllers:
            assert controller in (root / top.strip("/") / "cgroup.subtree_control").read_text().split()
        leaf = driver.cgroup_dirs(cid, parent)["unified"]
        assert driver.cgroup_dirs(cid, parent) == {"unified": leaf}
        (leaf / "cgroup.procs").write_text(str(sleeper.pid))
        assert driver.pids(cid, parent) == [sleeper.pid]
        if "hugetlb" in v2.controllers:
            # the kernel rounds a limit down to whole pages: ask for two pages of the smallest size
            size, page = min(((s, _bytes(s)) for s in host_page_sizes()), key=lambda item: item[1])
            limits = [pb.HugepageLimit(page_size=size, limit=2 * page)]
            oci = to_oci(pb.LinuxContainerResources(hugepage_limits=limits), driver.hierarchy)
            assert oci["hugepageLimits"] == [{"pageSize": size, "limit": 2 * page}]
            driver.update(cid, parent, oci)
            assert (leaf / f"hugetlb.{size}.max").read_text().strip() == str(2 * page)
        assert driver.kill_all(cid, parent) == 1
        assert sleeper.wait(10) == -9
        assert (leaf / "cgroup.freeze").read_text().strip() == "0"
        driver.remove_container(cid, parent)
        assert driver.remove_parent(parent) is True
        assert not (root / parent.strip("/")).exists()
    finally:
        _kill(sleeper)
        top_dir = root / top.strip("/")
        if top_dir.exists():
            _rmdir_tree(top_dir)


HOG = (
    "import time; b = bytearray(40 << 20); b[::4096] = b'x' * len(b[::4096]); "
    "print('touched', flush=True); time.sleep(300)"
)  # 40 MiB of touched memory


def test_cgroupfs_update_below_usage_is_failed_precondition(
    cgroupfs_parent: tuple[CgroupfsDriver, str],
) -> None:
    """The kernel refuses a memory limit below what the cgroup uses (no swap to push it to)."""
    driver, parent = cgroupfs_parent
    cid = _container_cgroup(driver, parent)
    hog = subprocess.Popen(
        [sys.executable, "-c", HOG],
        stdout=subprocess.PIPE,
    )
    try:
        _into_container_cgroup(driver, cid, parent, hog.pid)
        assert hog.stdout is not None and hog.stdout.readline().strip() == b"touched"
        if Path("/proc/swaps").read_text().count("\n") > 1:
            pytest.skip("with swap the kernel pushes the memory out instead of refusing")
        small = to_oci(pb.LinuxContainerResources(memory_limit_in_bytes=8 << 20), driver.hierarchy)
        with pytest.raises(FailedPrecondition, match=r"memory\.(limit_in_bytes|max)"):
            driver.update(cid, parent, small)
        assert hog.poll() is None  # refused, not OOM-killed
    finally:
        _kill(hog)
    driver.remove_container(cid, parent)
    assert driver.remove_parent(parent) is True


def test_cgroupfs_runc_container_gets_limits_and_update_changes_them(
    cgroupfs_parent: tuple[CgroupfsDriver, str], bundle: Path
) -> None:
    driver, parent = cgroupfs_parent
    cid = secrets.token_hex(32)
    driver.prepare_parent(parent)
    oci = to_oci(
        pb.LinuxContainerResources(
            cpu_shares=256,
            cpu_quota=30_000,
            cpu_period=100_000,
            memory_limit_in_bytes=64 << 20,
            cpuset_cpus="0",
        ),
        driver.hierarchy,
        driver.pids_limit,
    )
    root = write_spec(bundle, driver.container_cgroups_path(parent, cid), oci)
    try:
        subprocess.run(runc_argv(root, "run", "-d", "--bundle", str(bundle), cid), check=True, timeout=60)
        dirs = driver.cgroup_dirs(cid, parent)
        seen = _files(dirs, V1_FILES) if V1 else {}
        if V1:
            assert seen["cpu.shares"] == "256"
            assert seen["cpu.cfs_quota_us"] == "30000"
            assert seen["memory.limit_in_bytes"] == str(64 << 20)
            assert seen["pids.max"] == "64"
            assert (dirs["cpuset"] / "cpuset.cpus").read_text().strip() == "0"
        state = json.loads(subprocess.run(["runc", "--root", str(root), "state", cid], capture_output=True,
                                          check=True, text=True, timeout=30).stdout)  # fmt: skip
        assert f"/calyx-{cid}" in Path(f"/proc/{state['pid']}/cgroup").read_text()

        applied = to_oci(
            pb.LinuxContainerResources(
                cpu_shares=512,
                cpu_quota=12_345,
                cpu_period=50_000,
                memory_limit_in_bytes=128 << 20,
                cpuset_cpus="0-1",
            ),
            driver.hierarchy,
        )
        driver.update(cid, parent, applied)
        assert applied["memory"]["limit"] == 128 << 20
        if V1:
            after = _files(dirs, V1_FILES)
            assert after["cpu.shares"] == "512"
            assert after["cpu.cfs_quota_us"] == "12345"
            assert after["cpu.cfs_period_us"] == "50000"
            assert after["memory.limit_in_bytes"] == str(128 << 20)
            if "memory.memsw.limit_in_bytes" in seen:
                assert after["memory.memsw.limit_in_bytes"] == str(128 << 20)
            assert (dirs["cpuset"] / "cpuset.cpus").read_text().strip() == "0-1"
    finally:
        subprocess.run(runc_argv(root, "delete", "-f", cid), timeout=60)
    driver.remove_container(cid, parent)
    assert driver.remove_parent(parent) is True
    assert not any(d.exists() for d in driver.hierarchy.dirs(parent).values())


# --- systemd --------------------------------------------------------------------------------------------

PRELUDE = """
import json, subprocess, sys
from cri.api import api_pb2 as pb
from cri.containers.resources import to_oci
from sandbox.cgroups.systemd import SystemdDriver, UNIT
driver = SystemdDriver(pids_limit=64)
def out(value): print(json.dumps(value))
def detached(argv):  # outlives this snippet; must not hold its stdout/stderr pipes
    return subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""


def inside(systemd: NamespacedSystemd, code: str) -> Any:
    """Run driver code inside the test systemd; its last output line is JSON."""
    done = systemd.python(PRELUDE + textwrap.dedent(code), timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def container_in_a_new_slice() -> tuple[str, str, str, str]:
    """A new pod slice and container id: (cgroup parent, slice path, id, the container's scope path)."""
    parent, path = pod_slice()
    cid = secrets.token_hex(32)
    return parent, path, cid, f"{path}/calyx-{cid}.scope"


def remove_in_systemd(systemd: NamespacedSystemd, parent: str, *cids: str) -> Any:
    """The driver removes the containers' scopes, then the pod slice: what remove_parent answered."""
    removals = "".join(f"driver.remove_container({cid!r}, {parent!r})\n" for cid in cids)
    return inside(systemd, f"{removals}out(driver.remove_parent({parent!r}))")


def scope_limits(systemd: NamespacedSystemd, scope: str) -> tuple[int | None, int, int | None]:
    """A scope's (memory limit, CPU shares, CFS quota), as the host's cgroup files hold them (v2's
    cpu.weight turned back into the shares it was made from)."""
    memory, cpu = systemd.host_dir("memory", scope), systemd.host_dir("cpu", scope)
    if V1:
        return (
            int((memory / "memory.limit_in_bytes").read_text()),
            int((cpu / "cpu.shares").read_text()),
            int((cpu / "cpu.cfs_quota_us").read_text()),
        )
    quota = (cpu / "cpu.max").read_text().split()[0]
    weight = int((cpu / "cpu.weight").read_text())
    shares = {w: s for s, w in cgroup_files.SHARES_AS_WEIGHT.items()}.get(weight, -weight)
    limit = (memory / "memory.max").read_text().strip()
    return (None if limit == "max" else int(limit)), shares, (None if quota == "max" else int(quota))


def cpu_period(systemd: NamespacedSystemd, scope: str) -> int:
    cpu = systemd.host_dir("cpu", scope)
    return int((cpu / "cpu.cfs_period_us").read_text() if V1 else (cpu / "cpu.max").read_text().split()[1])


def pids_max(systemd: NamespacedSystemd, scope: str) -> str:
    return (systemd.host_dir("pids", scope) / "pids.max").read_text().strip()


def test_systemd_missing_pod_slice_is_created_and_removed(
    namespaced_systemd: NamespacedSystemd,
) -> None:
    parent, path = pod_slice()
    state = inside(
        namespaced_systemd,
        f"""
        before = driver.manager.unit_property({parent!r}, UNIT, "ActiveState")
        driver.prepare_parent({parent!r})
        driver.prepare_parent({parent!r})
        out([before, driver.manager.unit_property({parent!r}, UNIT, "ActiveState")])
        """,
    )
    assert state == [None, "active"]
    assert namespaced_systemd.host_dir("memory", path).is_dir()
    assert namespaced_systemd.host_dir("systemd", path).is_dir()
    gone = inside(
        namespaced_systemd, f"out([driver.remove_parent({parent!r}), driver.remove_parent({parent!r})])"
    )
    assert gone == [True, True]
    assert not namespaced_systemd.host_dir("memory", path).exists()
    assert not namespaced_systemd.host_dir("systemd", path).exists()


def test_systemd_scope_with_a_process_gets_limits_and_updates(
    namespaced_systemd: NamespacedSystemd,
) -> None:
    parent, path, cid, scope = container_in_a_new_slice()
    started = inside(
        namespaced_systemd,
        f"""
        driver.prepare_parent({parent!r})
        oci = to_oci(pb.LinuxContainerResources(
            cpu_shares=256, cpu_quota=30000, cpu_period=100000, memory_limit_in_bytes=64 << 20),
            driver.hierarchy, driver.pids_limit)
        child = detached(["sh", "-c", "trap '' TERM; exec sleep 3600"])  # deaf to SIGTERM
        props = [("Slice", ("s", {parent!r})), ("PIDs", ("au", [child.pid])), ("Delegate", ("b", True))]
        driver.manager.start_transient_unit(driver.container_unit({cid!r}), props + driver.properties(oci))
        out(child.pid)
        """,
    )
    try:
        memory = namespaced_systemd.host_dir("memory", scope)
        assert scope_limits(namespaced_systemd, scope) == (64 << 20, 256, 30_000)
        assert pids_max(namespaced_systemd, scope) == "64"
        assert (memory / "cgroup.procs").read_text().split() != []
        # v1: a line per hierarchy; v2: the one
        assert inside(namespaced_systemd, f"out(open('/proc/{started}/cgroup').read())").count(scope) >= (
            3 if V1 else 1
        )

        limit = inside(
            namespaced_systemd,
            f"""
            driver.update({cid!r}, {parent!r}, to_oci(pb.LinuxContainerResources(
                cpu_shares=512, cpu_quota=12345, cpu_period=50000, memory_limit_in_bytes=128 << 20),
                driver.hierarchy))
            out(driver.manager.unit_property(driver.container_unit({cid!r}), "org.freedesktop.systemd1.Scope",
                                             {"MemoryLimit" if V1 else "MemoryMax"!r}))
            """,
        )
        assert limit == 128 << 20  # systemd holds the new value (SetUnitProperties) ...
        assert scope_limits(namespaced_systemd, scope) == (128 << 20, 512, 12_345)  # ... and the files
        assert cpu_period(namespaced_systemd, scope) == 50_000
        if (memory / "memory.memsw.limit_in_bytes").exists():
            assert (memory / "memory.memsw.limit_in_bytes").read_text().strip() == str(128 << 20)
        assert inside(namespaced_systemd, f"out(driver.remove_parent({parent!r}))") is False  # busy
    finally:
        removed = remove_in_systemd(namespaced_systemd, parent, cid)
    assert removed is True
    assert not namespaced_systemd.host_dir("memory", scope).exists()
    assert not namespaced_systemd.host_dir("memory", path).exists()


def test_systemd_monitor_scope(
    namespaced_systemd: NamespacedSystemd,
) -> None:
    parent, path = pod_slice()
    cid = secrets.token_hex(32)
    cgroup = inside(
        namespaced_systemd,
        f"""
        driver.prepare_parent({parent!r})
        monitor = detached(["sleep", "3600"])
        driver.place_monitor({cid!r}, {parent!r}, monitor.pid)
        out(open(f"/proc/{{monitor.pid}}/cgroup").read())
        """,
    )
    try:
        if V1:
            assert f":memory:{path}/calyx-conmon-{cid}.scope\n" in cgroup
            assert f":name=systemd:{path}/calyx-conmon-{cid}.scope\n" in cgroup
        else:
            assert cgroup == f"0::{path}/calyx-conmon-{cid}.scope\n"
    finally:
        removed = remove_in_systemd(namespaced_systemd, parent, cid)
    assert removed is True
    assert not namespaced_systemd.host_dir("systemd", path).exists()


def test_systemd_recovery_sweep_removes_our_orphan_scopes_and_keeps_foreign_ones(
    namespaced_systemd: NamespacedSystemd,
) -> None:
    """Containers' recovery (cri/containers/orphans.py) on the systemd driver: ``calyx-<id>.scope`` units
    (and their conmon scopes) in a pod slice with no record are found; ours (runc keeps state of the id)
    are stopped, another runtime's populated scope stays."""
    parent, path = pod_slice()
    ours, foreign = secrets.token_hex(32), secrets.token_hex(32)
    found, removed = inside(
        namespaced_systemd,
        f"""
        import pathlib, shutil, tempfile
        from cri.containers.orphans import sweep_orphan_cgroups
        driver.prepare_parent({parent!r})
        roots = pathlib.Path(tempfile.mkdtemp(prefix="cx-roots-"))
        (roots / {ours!r}).mkdir()  # our runc's state of the container
        for cid in ({ours!r}, {foreign!r}):
            child = detached(["sleep", "3600"])
            props = [("Slice", ("s", {parent!r})), ("PIDs", ("au", [child.pid]))]
            driver.manager.start_transient_unit(driver.container_unit(cid), props)
        driver.place_monitor({ours!r}, {parent!r}, detached(["sleep", "3600"]).pid)
        found = sorted(driver.container_ids_under({parent!r}))
        removed = sweep_orphan_cgroups(driver, set(), [{parent!r}], roots / "exits", [roots])
        shutil.rmtree(roots)
        out([found, removed])
        """,
    )
    try:
        assert found == sorted([ours, foreign])
        assert removed == [ours]
        assert not namespaced_systemd.host_dir("systemd", f"{path}/calyx-{ours}.scope").exists()
        assert not namespaced_systemd.host_dir("systemd", f"{path}/calyx-conmon-{ours}.scope").exists()
        assert namespaced_systemd.host_dir("systemd", f"{path}/calyx-{foreign}.scope").is_dir()
    finally:
        gone = remove_in_systemd(namespaced_systemd, parent, foreign, ours)
    assert gone is True


def test_systemd_driver_leaves_slices_it_did_not_make(namespaced_systemd: NamespacedSystemd) -> None:
    """kubelet makes its pod slices itself: Calyx uses them and never stops them."""
    parent, path = pod_slice()
    result = inside(
        namespaced_systemd,
        f"""
        driver.manager.start_transient_unit({parent!r}, [("Description", ("s", "kubelet's pod slice"))])
        driver.prepare_parent({parent!r})
        kept = [driver.remove_parent({parent!r})]
        kept.append(driver.manager.unit_property({parent!r}, UNIT, "ActiveState"))
        driver.manager.stop_unit({parent!r})
        out(kept + [driver.manager.unit_property({parent!r}, UNIT, "ActiveState")])
        """,
    )
    assert result == [True, "active", None]
    assert not namespaced_systemd.host_dir("memory", path).exists()


def test_systemd_driver_is_safe_to_share_between_threads(namespaced_systemd: NamespacedSystemd) -> None:
    """gRPC threads share one driver and its D-Bus connection: each gets its own job result."""
    slices = [pod_slice() for _ in range(8)]
    names = [name for name, _ in slices]
    result = inside(
        namespaced_systemd,
        f"""
        from concurrent.futures import ThreadPoolExecutor
        names = {names!r}
        def cycle(name):
            driver.prepare_parent(name)
            state = lambda: driver.manager.unit_property(name, UNIT, "ActiveState")
            return [state(), driver.remove_parent(name), state()]
        with ThreadPoolExecutor(8) as pool:
            out(list(pool.map(cycle, names)))
        """,
    )
    assert result == [["active", True, None]] * len(slices)
    for _name, path in slices:
        assert not namespaced_systemd.host_dir("memory", path).exists()


def test_systemd_accepts_the_v2_unit_properties(namespaced_systemd: NamespacedSystemd) -> None:
    """The property names and D-Bus types the driver uses on a v2 host, checked against the real systemd
    (it stores them on this v1 host too, where it cannot apply them)."""
    parent, _path = pod_slice()
    cid = secrets.token_hex(32)
    props = inside(
        namespaced_systemd,
        f"""
        from pathlib import Path
        from sandbox.cgroups.hierarchy import Hierarchy, Mode, Mount
        unified = Mount(Path("/sys/fs/cgroup/unified"), "/", frozenset())
        v2 = SystemdDriver(hierarchy=Hierarchy(Mode.V2, {{}}, unified))
        oci = {{"cpu": {{"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"}},
               "memory": {{"limit": 64 << 20, "swap": 96 << 20}}, "pids": {{"limit": 99}}}}
        unit = v2.container_unit({cid!r})
        child = detached(["sleep", "3600"])
        driver.prepare_parent({parent!r})
        driver.manager.start_transient_unit(
            unit, [("Slice", ("s", {parent!r})), ("PIDs", ("au", [child.pid]))] + v2.properties(oci))
        scope = "org.freedesktop.systemd1.Scope"
        names = ["CPUWeight", "CPUQuotaPerSecUSec", "CPUQuotaPeriodUSec", "MemoryMax", "MemorySwapMax",
                 "TasksMax", "AllowedCPUs", "AllowedMemoryNodes"]
        seen = {{n: driver.manager.unit_property(unit, scope, n) for n in names}}
        seen = {{n: list(v.rstrip(b"\\0")) if isinstance(v, bytes) else v for n, v in seen.items()}}
        driver.remove_container({cid!r}, {parent!r})
        driver.remove_parent({parent!r})
        out(seen)
        """,
    )
    assert props == {
        "CPUWeight": 39,
        "CPUQuotaPerSecUSec": 500_000,
        "CPUQuotaPeriodUSec": 100_000,
        "MemoryMax": 64 << 20,
        "MemorySwapMax": 32 << 20,
        "TasksMax": 99,
        "AllowedCPUs": [0b11],
        "AllowedMemoryNodes": [0b1],
    }


def test_systemd_driver_reconnects_when_the_bus_restarts(
    namespaced_systemd: NamespacedSystemd,
) -> None:
    first, first_path = pod_slice()
    second, second_path = pod_slice()
    states = inside(
        namespaced_systemd,
        f"""
        driver.prepare_parent({first!r})
        subprocess.run(["systemctl", "restart", "dbus.service"], check=True, timeout=60)
        driver.prepare_parent({second!r})  # on the connection opened after the restart
        out([driver.manager.unit_property(p, UNIT, "ActiveState") for p in ({first!r}, {second!r})]
            + [driver.remove_parent({first!r}), driver.remove_parent({second!r})])
        """,
    )
    assert states == ["active", "active", True, True]
    assert not namespaced_systemd.host_dir("memory", first_path).exists()
    assert not namespaced_systemd.host_dir("memory", second_path).exists()


def test_runc_systemd_cgroup_scope_in_a_pod_slice(
    namespaced_systemd: NamespacedSystemd,
    bundle: Path,
) -> None:
    """What the containers subsystem relies on: runc --systemd-cgroup with ``<slice>:calyx:<id>``."""
    parent, path, cid, scope = container_in_a_new_slice()
    resources = {
        "cpu_shares": 384,
        "cpu_quota": 25000,
        "cpu_period": 100000,
        "memory_limit_in_bytes": 96 << 20,
    }
    cgroups_path, oci = inside(
        namespaced_systemd,
        f"""
        driver.prepare_parent({parent!r})
        oci = to_oci(pb.LinuxContainerResources(**{resources!r}), driver.hierarchy, driver.pids_limit)
        out([driver.container_cgroups_path({parent!r}, {cid!r}), oci])
        """,
    )
    assert cgroups_path == f"{parent}:calyx:{cid}"
    root = write_spec(bundle, cgroups_path, oci)
    try:
        namespaced_systemd.run(runc_argv(root, "run", "-d", "--bundle", str(bundle), cid, systemd=True))
        state = inside(
            namespaced_systemd,
            f"""
            unit = driver.container_unit({cid!r})
            out([driver.manager.unit_property(unit, UNIT, "ActiveState"),
                 {{k: str(v) for k, v in driver.cgroup_dirs({cid!r}, {parent!r}).items()}}])
            """,
        )
        assert state[0] == "active"
        if V1:
            assert state[1]["memory"] == f"/sys/fs/cgroup/memory{scope}"
        else:
            assert state[1] == {"unified": f"/sys/fs/cgroup{scope}"}
        assert scope_limits(namespaced_systemd, scope) == (96 << 20, 384, 25_000)
        assert pids_max(namespaced_systemd, scope) == "64"
        assert (namespaced_systemd.host_dir("memory", scope) / "cgroup.procs").read_text().split()

        inside(
            namespaced_systemd,
            f"""
            driver.update({cid!r}, {parent!r}, to_oci(pb.LinuxContainerResources(
                cpu_shares=768, cpu_quota=40000, cpu_period=100000, memory_limit_in_bytes=160 << 20,
                cpuset_cpus="0"), driver.hierarchy))
            out(True)
            """,
        )
        assert scope_limits(namespaced_systemd, scope) == (160 << 20, 768, 40_000)
        assert (namespaced_systemd.host_dir("cpuset", scope) / "cpuset.cpus").read_text().strip() == "0"

        # runc kill --all reads the devices cgroup, out of which systemd (v1) has moved the process:
        # kill_all reads name=systemd instead, and the container's init goes.
        killed = inside(
            namespaced_systemd,
            f"""
            import time
            pids = driver.pids({cid!r}, {parent!r})
            count = driver.kill_all({cid!r}, {parent!r})
            deadline = time.monotonic() + 60
            while driver.pids({cid!r}, {parent!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
            out([pids, count, driver.pids({cid!r}, {parent!r})])
            """,
        )
        assert len(killed[0]) == 1 and killed[1] == 1 and killed[2] == []
        state = namespaced_systemd.run(["runc", "--systemd-cgroup", "--root", str(root), "state", cid]).stdout
        assert json.loads(state)["status"] == "stopped"
    finally:
        namespaced_systemd.run(runc_argv(root, "delete", "-f", cid, systemd=True), check=False)
        removed = remove_in_systemd(namespaced_systemd, parent, cid)
    assert removed is True
    for hierarchy in ("memory", "cpu", "cpuset", "pids", "systemd"):
        assert not namespaced_systemd.host_dir(hierarchy, path).exists(), hierarchy


def test_systemd_driver_refuses_a_cgroupfs_parent_before_any_dbus_call(
    namespaced_systemd: NamespacedSystemd,
) -> None:
    result = inside(
        namespaced_systemd,
        """
        from calyx_base.errors import InvalidArgument
        errors = []
        for parent in ["/kubepods/besteffort/pod1", "kubepods"]:
            try:
                driver.prepare_parent(parent)
            except InvalidArgument as exc:
                errors.append(str(exc))
        out(errors)
        """,
    )
    assert len(result) == 2
    assert "'/kubepods/besteffort/pod1'" in result[0]


# --- the daemon with the systemd driver -------------------------------------------------------------


@pytest.mark.parametrize("pid_mode", [pb.CONTAINER, pb.POD], ids=["own-pidns", "pod-pidns"])
def test_daemon_with_systemd_driver_puts_containers_in_scopes_of_the_pod_slice(
    namespaced_systemd: NamespacedSystemd,
    image_registry: LoopbackRegistry,
    short_tmp: Path,
    pid_mode: int,
) -> None:
    """CRI end to end: pod slice created, container scope and conmon scope, limits, update, cleanup."""
    with pod_in_a_slice(namespaced_systemd, image_registry, short_tmp, {"pids_limit": 77}) as pod:
        rt = pod.daemon.runtime
        path = pod.path
        assert namespaced_systemd.host_dir("memory", path).is_dir()

        resources = pb.LinuxContainerResources(
            cpu_shares=300, cpu_quota=20_000, cpu_period=100_000, memory_limit_in_bytes=80 << 20
        )
        # POD: stop kills with runc kill --all, which needs repair_placement here
        cid = pod.start_container("limited", ["sleep", "3600"], resources, pid_mode)
        scope = f"{path}/calyx-{cid}.scope"
        memory = namespaced_systemd.host_dir("memory", scope)
        assert scope_limits(namespaced_systemd, scope) == (80 << 20, 300, 20_000)
        assert pids_max(namespaced_systemd, scope) == "77"
        seen = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["cat", "/proc/self/cgroup"], timeout=30))
        assert seen.exit_code == 0, seen.stderr
        lines = seen.stdout.decode().split()
        if V1:
            assert lines and all(line.endswith(f"{path}/calyx-{cid}.scope") for line in lines), lines
        else:  # a private cgroup namespace rooted at its scope, as containerd and CRI-O give on v2
            assert lines == ["0::/"], lines
            assert (namespaced_systemd.host_dir("memory", scope) / "cgroup.procs").read_text().split()
        monitor = namespaced_systemd.host_dir("systemd", f"{path}/calyx-conmon-{cid}.scope")
        assert (monitor / "cgroup.procs").read_text().split(), "conmon is not in its own scope"

        rt.UpdateContainerResources(
            pb.UpdateContainerResourcesRequest(
                container_id=cid,
                linux=pb.LinuxContainerResources(
                    cpu_shares=600, cpu_quota=30_000, cpu_period=100_000, memory_limit_in_bytes=100 << 20
                ),
            ),
            timeout=60,
        )
        assert scope_limits(namespaced_systemd, scope) == (100 << 20, 600, 30_000)

        rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=120)
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=120)
        assert not memory.exists()
        pod.remove()
        for hierarchy in ("memory", "cpu", "cpuset", "pids", "systemd"):
            assert not namespaced_systemd.host_dir(hierarchy, path).exists(), hierarchy


def test_daemon_with_systemd_driver_takes_a_path_of_slices_as_cgroup_parent(
    namespaced_systemd: NamespacedSystemd, image_registry: LoopbackRegistry, short_tmp: Path
) -> None:
    """critest (and cri-tools' docs) name a pod's slice by its path, /test.slice: the last component is
    the slice, as containerd and CRI-O take it; the pod and its containers live there; removal stops it."""
    with pod_in_a_slice(namespaced_systemd, image_registry, short_tmp, parent_as_path=True) as pod:
        rt = pod.daemon.runtime
        assert pod.config.linux.cgroup_parent == pod.path
        status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id), timeout=60)
        assert status.status.state == pb.SANDBOX_READY
        cid = pod.start_container("in-path", ["sleep", "3600"], pb.LinuxContainerResources(), pb.CONTAINER)
        scope = namespaced_systemd.host_dir("systemd", f"{pod.path}/calyx-{cid}.scope")
        assert (scope / "cgroup.procs").read_text().split(), "the container is not in its scope"
        pod.remove()
        assert not namespaced_systemd.host_dir("systemd", pod.path).exists()


def test_systemd_driver_without_a_bus_refuses_pods_cleanly(daemon_factory: Any, short_tmp: Path) -> None:
    """No system bus: the daemon still serves; a pod that needs a slice is UNAVAILABLE, nothing is left."""
    daemon = daemon_factory(
        {"cgroup": {"driver": "systemd"}},
        env={"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={short_tmp}/no-bus"},
    )
    parent, _path = pod_slice()
    linux = host_network_linux()
    linux.cgroup_parent = parent
    with pytest.raises(grpc.RpcError) as err:
        run_pod(daemon, pod_config(linux=linux))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "D-Bus" in (err.value.details() or "")
    assert list(daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items) == []
    assert "systemd not reachable over D-Bus" in daemon.log()


@pytest.mark.skipif(HostSystemd.usable(), reason="no test systemd here: the tests use the host's own (v2)")
def test_the_test_systemd_dies_with_its_test_process_and_its_cgroups_are_reclaimed() -> None:
    """A test run killed with -9 must not leave a systemd behind; the next run removes its cgroups."""
    owner = subprocess.Popen(
        [sys.executable, "-c", SYSTEMD_OWNER],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert owner.stdout is not None
    pid1, dirs = owner.stdout.readline().split(" ", 1)
    owner.kill()
    owner.wait(10)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid1}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    outlived = Path(f"/proc/{pid1}").exists()
    if outlived:  # ours: started by the owner process this test ran
        os.kill(int(pid1), signal.SIGKILL)
    assert not outlived, "the test systemd outlived its test process"
    leftovers = [Path(d) for d in json.loads(dirs)]
    assert leftovers and all(d.is_dir() for d in leftovers)  # empty now, removed by the next start
    NamespacedSystemd().start().stop()
    assert not any(d.exists() for d in leftovers)
    assert not list(Path("/tmp").glob(f"{leftovers[0].name}-*"))  # its work dir too


SYSTEMD_OWNER = """
import json, time
from tests.systemd_fixture import HostSystemd, NamespacedSystemd
sd = NamespacedSystemd().start()
print(sd.pid1, json.dumps([str(d) for d in sd._cgdirs]), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(V2, reason="v1's devices controller; v2 confines devices with eBPF, not a cgroup")
def test_repair_placement_confines_a_runc_systemd_container_and_runc_kill_all_works(
    namespaced_systemd: NamespacedSystemd,
    bundle: Path,
) -> None:
    """After repair_placement every v1 controller of the container's init is its scope (runc leaves
    devices at the pod slice here), so runc's device list confines it and ``runc kill --all`` works."""
    parent, path, cid, scope = container_in_a_new_slice()
    inside(namespaced_systemd, f"driver.prepare_parent({parent!r}); out(True)")
    root = write_spec(bundle, f"{parent}:calyx:{cid}", {})
    runc = ["runc", "--systemd-cgroup", "--root", str(root)]
    try:
        namespaced_systemd.run(runc_argv(root, "create", "--bundle", str(bundle), cid, systemd=True))
        placed = inside(
            namespaced_systemd,
            f"""
            repaired = driver.repair_placement({cid!r}, {parent!r})
            (pid,) = driver.pids({cid!r}, {parent!r})
            lines = open(f"/proc/{{pid}}/cgroup").read().splitlines()
            out([repaired, lines, driver.repair_placement({cid!r}, {parent!r})])
            """,
        )
        repaired, lines, again = placed
        assert again == []  # nothing left to repair
        assert all(line.endswith(scope) for line in lines), (repaired, lines)
        devices = (namespaced_systemd.host_dir("devices", scope) / "devices.list").read_text()
        assert "a *:* rwm" not in devices  # the container's own allow-list applies
        namespaced_systemd.run([*runc, "start", cid])
        namespaced_systemd.run([*runc, "kill", "--all", cid, "KILL"])
        for _ in range(500):
            state = json.loads(namespaced_systemd.run([*runc, "state", cid]).stdout)["status"]
            if state == "stopped":
                break
            time.sleep(0.01)
        assert state == "stopped"
    finally:
        namespaced_systemd.run(runc_argv(root, "delete", "-f", cid, systemd=True), check=False)
        removed = remove_in_systemd(namespaced_systemd, parent, cid)
    assert removed is True
    assert not namespaced_systemd.host_dir("devices", path).exists()
