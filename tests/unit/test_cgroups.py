"""cgroup parent syntax, slice expansion, mountinfo parsing and CRI -> OCI resources."""

from __future__ import annotations

from pathlib import Path

import pytest

from calyx_base.errors import FailedPrecondition, InvalidArgument
from cri.api import api_pb2 as pb
from cri.containers.resources import to_oci as oci_resources
from sandbox.cgroups.cgroupfs import CgroupfsDriver
from sandbox.cgroups.hierarchy import Hierarchy, Mode, Mount, detect
from sandbox.cgroups.names import slice_path
from sandbox.cgroups.resources import check_memory_fits, file_writes, v2_cpu_weight
from sandbox.cgroups.systemd import SystemdDriver

# A v1 host like the CI machines (cpu and cpuacct apart, no hugetlb, an empty cgroup2 mount).
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
COMOUNTED = """\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /outer /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
"""
UNIFIED = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"

SYSTEMD_BAD = ["/kubepods/pod1", "kubepods", "pod.slice/x", "a--b.slice", "-a.slice", "a-.slice", ".slice"]
# Paths of slices whose components are not all slice names, or that are not normalised.
SYSTEMD_BAD_PATHS = [
    "/",
    "//test.slice",
    "/test.slice/",
    "/a.slice//b.slice",
    "/a.slice/../b.slice",
    "/../../etc.slice",
    "/a.slice/./b.slice",
    "/a.slice/b",
    "/a--b.slice",
    "/kubepods.slice/x\x00.slice",
    "/" + "a" * 300 + ".slice",
]
CGROUPFS_BAD = ["kubepods-besteffort-pod1.slice", "kubepods/pod1", "/a/../b", "/a/./b", "/a//b"]


@pytest.mark.parametrize("parent", SYSTEMD_BAD + SYSTEMD_BAD_PATHS)
def test_systemd_driver_refuses_parents_that_are_not_slice_names(parent: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        SystemdDriver(hierarchy=detect()).validate_parent(parent)
    assert repr(parent) in str(err.value)


@pytest.mark.parametrize("parent", CGROUPFS_BAD)
def test_cgroupfs_driver_refuses_parents_that_are_not_absolute_paths(parent: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        CgroupfsDriver(hierarchy=detect()).validate_parent(parent)
    assert repr(parent) in str(err.value)


def test_good_parents_and_the_cgroups_paths_given_to_runc() -> None:
    systemd = SystemdDriver(hierarchy=detect())
    cgroupfs = CgroupfsDriver(hierarchy=detect())
    systemd.validate_parent("kubepods-besteffort-pod1b2c.slice")
    cgroupfs.validate_parent("/kubepods/besteffort/pod1b2c")
    assert systemd.container_cgroups_path("kubepods-pod1.slice", "ab12") == "kubepods-pod1.slice:calyx:ab12"
    assert (
        systemd.container_path("ab12", "kubepods-pod1.slice")
        == "/kubepods.slice/kubepods-pod1.slice/calyx-ab12.scope"
    )
    assert cgroupfs.container_cgroups_path("/kubepods/pod1", "ab12") == "/kubepods/pod1/calyx-ab12"
    assert systemd.container_cgroups_path("", "ab12") == "system.slice:calyx:ab12"
    assert cgroupfs.container_cgroups_path("", "ab12") == "/calyx/calyx-ab12"
    with pytest.raises(InvalidArgument):
        cgroupfs.container_cgroups_path("/kubepods", "../x")


def test_systemd_driver_takes_a_path_of_slices_by_its_last_component() -> None:
    """critest sends /test.slice to a runtime on the systemd driver; containerd and CRI-O use the last
    component of such a path as the pod's slice."""
    systemd = SystemdDriver(hierarchy=detect())
    systemd.validate_parent("/test.slice")
    assert systemd.parent_or_default("/test.slice") == "test.slice"
    assert systemd.container_cgroups_path("/test.slice", "ab12") == "test.slice:calyx:ab12"
    assert systemd.parent_path("/test.slice") == "/test.slice"
    assert systemd.container_path("ab12", "/kubepods.slice/kubepods-pod1.slice") == (
        "/kubepods.slice/kubepods-pod1.slice/calyx-ab12.scope"
    )
    assert systemd.monitor_cgroup("ab12", "/a.slice/b.slice") == "calyx-conmon-ab12.scope"
    assert systemd.parent_or_default("/-.slice") == "-.slice"
    configured = SystemdDriver(hierarchy=detect(), default_parent="/pods.slice")
    assert configured.parent_or_default("") == "pods.slice"


def test_slice_names_expand_like_systemd() -> None:
    assert slice_path("kubepods-besteffort-pod1.slice") == (
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"
    )
    assert slice_path("system.slice") == "/system.slice"
    assert slice_path("-.slice") == "/"


def test_mountinfo_layouts() -> None:
    hybrid = detect(HYBRID)
    assert hybrid.mode is Mode.V1
    assert hybrid.controllers == {"cpu", "cpuacct", "memory", "pids"}
    assert hybrid.dirs("/k/p")["cpuacct"].as_posix() == "/sys/fs/cgroup/cpuacct/k/p"
    assert hybrid.dirs("/k/p", named=True)["name=systemd"].as_posix() == "/sys/fs/cgroup/systemd/k/p"
    comounted = detect(COMOUNTED)
    dirs = comounted.dirs("/outer/k")
    assert dirs["cpu"] == dirs["cpuacct"]
    assert dirs["memory"].as_posix() == "/sys/fs/cgroup/memory/k"  # the mount shows /outer
    assert detect(UNIFIED).mode is Mode.V2


def _hybrid() -> Hierarchy:
    return detect(HYBRID)


def test_oci_resources_from_cri() -> None:
    resources = pb.LinuxContainerResources(
        cpu_shares=512,
        cpu_quota=50_000,
        cpu_period=100_000,
        cpuset_cpus="0-1",
        cpuset_mems="0",
        memory_limit_in_bytes=64 << 20,
        oom_score_adj=500,
    )
    oci = oci_resources(resources, _hybrid(), pids_limit=100)
    assert oci["cpu"] == {"shares": 512, "quota": 50_000, "period": 100_000, "cpus": "0-1", "mems": "0"}
    assert oci["memory"]["limit"] == 64 << 20
    assert oci["pids"] == {"limit": 100}
    assert "oomScoreAdj" not in oci and "oom_score_adj" not in str(oci)
    assert oci_resources(pb.LinuxContainerResources(), _hybrid()) == {}


def test_swap_defaults_to_the_memory_limit_where_swap_is_accounted() -> None:
    here = detect()
    oci = oci_resources(pb.LinuxContainerResources(memory_limit_in_bytes=1 << 30), here)
    memsw = (here.dirs("/")["memory"] / "memory.memsw.limit_in_bytes").exists()
    assert oci["memory"].get("swap") == ((1 << 30) if memsw else None)
    with pytest.raises(InvalidArgument, match="below memory_limit"):
        oci_resources(
            pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20, memory_swap_limit_in_bytes=32 << 20),
            here,
        )


def test_hugepages_skipped_without_hugetlb_and_unified_refused_on_v1() -> None:
    limits = [pb.HugepageLimit(page_size="2MB", limit=4 << 20)]
    assert "hugepageLimits" not in oci_resources(
        pb.LinuxContainerResources(hugepage_limits=limits), _hybrid()
    )
    with pytest.raises(InvalidArgument, match="cgroup v2"):
        oci_resources(pb.LinuxContainerResources(unified={"memory.high": "1000000"}), _hybrid())


@pytest.mark.parametrize(
    "field,value",
    [
        ("cpu_quota", 10),
        ("cpu_period", 10),
        ("cpu_shares", -5),
        ("cpuset_cpus", "a-b"),
        ("cpuset_cpus", "3-1"),
        ("cpuset_cpus", "0-"),
        ("cpuset_cpus", "0-100000"),
        ("cpuset_mems", "4096"),
        ("memory_limit_in_bytes", 4096),
        ("memory_swap_limit_in_bytes", -5927),
        ("memory_swap_limit_in_bytes", 1 << 30),
    ],
)
def test_bad_values_are_invalid_arguments(field: str, value: object) -> None:
    with pytest.raises(InvalidArgument, match=field):
        oci_resources(pb.LinuxContainerResources(**{field: value}), _hybrid())


def test_v2_file_values() -> None:
    v2 = detect(UNIFIED)
    oci = {"cpu": {"shares": 1024, "quota": 50_000, "period": 100_000}, "memory": {"limit": 100, "swap": 300}}
    writes = {name: value for _c, name, value in file_writes(oci, v2)}
    assert writes["cpu.weight"] == str(v2_cpu_weight(1024)) == "39"
    assert writes["cpu.max"] == "50000 100000"
    assert writes["memory.max"] == "100"
    assert writes["memory.swap.max"] == "200"


def _v2_cgroup(tmp_path: Path, current: int, file_cache: int, swap_max: str) -> Hierarchy:
    """A v2 hierarchy over ``tmp_path`` whose cgroup /pod/c holds ``current`` bytes, ``file_cache`` of them
    page cache (the files memory.current, memory.stat and memory.swap.max, as the kernel words them)."""
    directory = tmp_path / "pod" / "c"
    directory.mkdir(parents=True)
    (directory / "memory.current").write_text(f"{current}\n")
    (directory / "memory.stat").write_text(f"anon {current - file_cache}\nfile {file_cache}\nshmem 0\n")
    (directory / "memory.swap.max").write_text(f"{swap_max}\n")
    return Hierarchy(Mode.V2, {}, Mount(tmp_path, "/", frozenset({"memory", "cpu", "pids"})))


def test_v2_memory_limit_below_what_the_cgroup_holds_is_failed_precondition(tmp_path: Path) -> None:
    """v1's kernel refuses such a limit (EBUSY); v2's takes it and OOM-kills: Calyx refuses first."""
    v2 = _v2_cgroup(tmp_path, current=48 << 20, file_cache=8 << 20, swap_max="0")
    with pytest.raises(FailedPrecondition, match=r"memory\.max=8388608 is below the 41943040 bytes"):
        check_memory_fits({"memory": {"limit": 8 << 20}}, v2, "/pod/c")
    check_memory_fits({"memory": {"limit": 40 << 20}}, v2, "/pod/c")  # the page cache can be given back
    check_memory_fits({"memory": {"limit": -1}}, v2, "/pod/c")  # no limit
    check_memory_fits({"cpu": {"shares": 2}}, v2, "/pod/c")  # no memory asked
    check_memory_fits({"memory": {"limit": 8 << 20}}, detect(HYBRID), "/pod/c")  # v1: the kernel decides


def test_oom_kill_counts_of_a_container_and_its_parent_in_both_layouts(tmp_path: Path) -> None:
    """v2 reads memory.events, v1 memory.oom_control (as the kernels word them); a cgroup that is gone,
    as a systemd scope is once empty, or a file without the key is None, never 0."""
    cid = "ab" * 32
    v2 = Hierarchy(Mode.V2, {}, Mount(tmp_path / "v2", "/", frozenset({"memory", "pids"})))
    driver = CgroupfsDriver(v2)
    pod = tmp_path / "v2" / "pod"
    (pod / f"calyx-{cid}").mkdir(parents=True)
    (pod / "memory.events").write_text("low 0\nhigh 0\nmax 41\noom 3\noom_kill 3\noom_group_kill 0\n")
    (pod / f"calyx-{cid}" / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 1\noom_kill 2\n")
    assert driver.parent_oom_kills("/pod") == 3
    assert driver.container_oom_kills(cid, "/pod") == 2
    assert driver.container_oom_kills("cd" * 32, "/pod") is None  # no such cgroup
    (pod / f"calyx-{cid}" / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 1\n")  # before 4.13
    assert driver.container_oom_kills(cid, "/pod") is None

    memory = tmp_path / "v1" / "memory"
    v1 = Hierarchy(Mode.V1, {"memory": Mount(memory, "/", frozenset({"memory"}))})
    (memory / "pod").mkdir(parents=True)
    (memory / "pod" / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
    assert CgroupfsDriver(v1).parent_oom_kills("/pod") == 5
    no_memory = Hierarchy(Mode.V1, {"pids": Mount(tmp_path / "v1" / "pids", "/", frozenset({"pids"}))})
    assert CgroupfsDriver(no_memory).parent_oom_kills("/pod") is None
