"""CDI devices in pods with a user namespace of their own, end to end (real daemon, runc 1.1 and
user-namespaced pods): a CDI spec's bind mounts are idmapped through the pod's user namespace as the
CRI's own mounts are, so a root-owned 0700 dir reads as root's inside, as in a pod without a user
namespace; bad and hostile spec mounts are refused, or resolved, alike in both kinds of pod; a mount the
kernel cannot idmap is refused naming the device; device nodes runc can bind in a user namespace work,
the others are refused naming the device; nothing stays mounted once the pod is gone."""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import cdi_fixtures
from tests.cdi_fixtures import CdiCx, write_spec
from tests.fault_audit import audit
from tests.userns_pods import host_base, in_pod_userns, staging_mounts, userns_pod

cdx = cdi_fixtures.cdx

KIND = "calyx.test/userns"
FULL = os.stat("/dev/full").st_rdev


def _spec(devices: dict[str, dict[str, object]]) -> dict[str, object]:
    return {
        "cdiVersion": "0.6.0",
        "kind": KIND,
        "devices": [{"name": name, "containerEdits": edits} for name, edits in devices.items()],
    }


def _bind(host: Path | str, where: str, *options: str) -> dict[str, object]:
    return {"hostPath": str(host), "containerPath": where, "options": list(options)}


def _pod(cx: CdiCx, userns: bool) -> tuple[str, pb.PodSandboxConfig]:
    return userns_pod(cx, host_base()) if userns else cx.pod()


def _config(cx: CdiCx, pod: tuple[str, pb.PodSandboxConfig], name: str, *devices: str) -> pb.ContainerConfig:
    """A container asking for ``devices`` (of KIND unless qualified) in ``pod``."""
    config = cx.config(name, ["sleep", "1000"])
    config.CDI_devices.extend(pb.CDIDevice(name=d if "=" in d else f"{KIND}={d}") for d in devices)
    in_userns = pod[1].linux.security_context.namespace_options.HasField("userns_options")
    return in_pod_userns(config, pod) if in_userns else config


def _refused(cx: CdiCx, pod: tuple[str, pb.PodSandboxConfig], device: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        cx.create(pod, _config(cx, pod, "refused", device))
    _nothing_left(cx)
    return err.value


def _nothing_left(cx: CdiCx) -> None:
    assert cx.rt.ListContainers(pb.ListContainersRequest()).containers == []
    assert staging_mounts(cx) == [] and audit(cx) == []


def _remove_pod(cx: CdiCx, pod: tuple[str, pb.PodSandboxConfig]) -> None:
    cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
    cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)


def _mounted_anywhere(*paths: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if any(f" {p} " in line or f"{p}/" in line for p in paths)]


def test_cdi_mounts_are_idmapped_like_cri_mounts(cdx: CdiCx, short_tmp: Path) -> None:
    private = short_tmp / "private"  # a driver's dir: only host root may enter it or read its file
    private.mkdir(mode=0o700)
    (private / "data").write_text("from the host\n")
    (private / "data").chmod(0o600)
    single = short_tmp / "single"  # a file bound on a file, root's alone
    single.write_text("one file\n")
    single.chmod(0o600)
    write_spec(
        cdx.cdi_low,
        "mounts.yaml",
        _spec(
            {
                "private": {
                    "mounts": [
                        _bind(private, "/cdi/private", "rw", "bind"),
                        _bind(single, "/cdi/single", "ro", "bind"),
                    ]
                }
            }
        ),
    )
    pod = _pod(cdx, userns=True)
    cid = cdx.create(pod, _config(cdx, pod, "mounts", "private"))
    assert staging_mounts(cdx) == []  # released once runc has made the container's own mounts
    cdx.start(cid)

    owners = cdx.output(cid, "stat", "-c", "%u:%g %a", "/cdi/private", "/cdi/private/data", "/cdi/single")
    assert owners.splitlines() == ["0:0 700", "0:0 600", "0:0 600"]
    assert cdx.output(cid, "cat", "/cdi/private/data") == "from the host\n"
    assert cdx.output(cid, "cat", "/cdi/single") == "one file\n"
    # the container's root writes as host root, and the spec's ro holds
    assert cdx.output(cid, "sh", "-c", "echo new > /cdi/private/new && echo ok") == "ok\n"
    assert (private / "new").stat().st_uid == 0 and (private / "new").read_text() == "new\n"
    denied = cdx.exec(cid, "sh", "-c", "echo x > /cdi/single")
    assert denied.exit_code != 0 and b"Read-only file system" in denied.stderr
    mountinfo = cdx.output(cid, "cat", "/proc/self/mountinfo").splitlines()
    for point in ("/cdi/private", "/cdi/single"):
        assert any(f" {point} " in line and "idmapped" in line for line in mountinfo), point
    # the runtime spec names the host paths, not the staging mounts runc bound
    spec = json.loads(cdx.status(cid, verbose=True).info["info"])["runtimeSpec"]
    sources = {m["destination"]: m["source"] for m in spec["mounts"]}
    assert (sources["/cdi/private"], sources["/cdi/single"]) == (str(private), str(single))

    cdx.stop(cid)
    cdx.remove(cid)
    _remove_pod(cdx, pod)
    assert staging_mounts(cdx) == [] and audit(cdx) == []
    assert _mounted_anywhere(private, single) == []
    assert sorted(p.name for p in private.iterdir()) == ["data", "new"]
    assert (private / "data").read_text() == "from the host\n" and single.read_text() == "one file\n"


@pytest.mark.parametrize("userns", [False, True], ids=["host-userns", "pod-userns"])
def test_bad_and_hostile_spec_mounts_are_treated_alike_in_both_kinds_of_pod(
    cdx: CdiCx, short_tmp: Path, userns: bool
) -> None:
    links = short_tmp / "links"
    links.mkdir()
    (links / "etc").symlink_to("/etc")
    (links / "up").symlink_to("../../../../../../../../etc")  # relative, through '..'
    (links / "dangling").symlink_to(short_tmp / "nosuch")
    # a spec with '..' in a host path is broken as a whole: a file of its own, a kind of its own
    dotdot = write_spec(
        cdx.cdi_high,
        "dotdot.json",
        {**_spec({"x": {"mounts": [_bind(f"{short_tmp}/../../etc", "/e")]}}), "kind": "calyx.test/dotdot"},
    )
    spec = write_spec(
        cdx.cdi_low,
        "hostile.json",
        _spec(
            {
                "dangling": {"mounts": [_bind(links / "dangling", "/cdi/x")]},
                "missing": {"mounts": [_bind(short_tmp / "nosuch", "/cdi/x")]},
                "etc": {"mounts": [_bind(links / "etc", "/cdi/etc", "ro", "rbind")]},
                "up": {"mounts": [_bind(links / "up", "/cdi/etc", "ro", "rbind")]},
            }
        ),
    )
    pod = _pod(cdx, userns)
    # refused before anything is made, naming the device and its spec file, in either kind of pod
    nosuch = short_tmp / "nosuch"
    for device, path, reason in (
        ("calyx.test/dotdot=x", dotdot, "must not contain '..'"),
        (f"{KIND}=dangling", spec, f"{links / 'dangling'} does not exist (it leads to {nosuch})"),
        (f"{KIND}=missing", spec, f"host path {short_tmp / 'nosuch'} does not exist"),
    ):
        err = _refused(cdx, pod, device)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (device, err.details())
        for text in (device, str(path), reason):
            assert text in (err.details() or ""), (text, err.details())
    # a symlink is resolved on the host, as the bind follows it: the mount is the host's /etc, named so
    # in the runtime spec, and in a pod user namespace idmapped as it is for the CRI's host paths
    for device in ("etc", "up"):
        cid = cdx.start(cdx.create(pod, _config(cdx, pod, device, device)))
        spec_mounts = json.loads(cdx.status(cid, verbose=True).info["info"])["runtimeSpec"]["mounts"]
        assert {m["destination"]: m["source"] for m in spec_mounts}["/cdi/etc"] == "/etc"
        hostname = Path("/etc/hostname")
        if hostname.exists():
            assert cdx.output(cid, "cat", "/cdi/etc/hostname") == hostname.read_text()
        assert cdx.output(cid, "stat", "-c", "%u:%g", "/cdi/etc/passwd").strip() == "0:0"
        denied = cdx.exec(cid, "touch", "/cdi/etc/calyx-cdi-test")
        assert denied.exit_code != 0 and b"Read-only file system" in denied.stderr
        cdx.stop(cid)
        cdx.remove(cid)
    _remove_pod(cdx, pod)
    assert staging_mounts(cdx) == [] and audit(cdx) == []
    assert not Path("/etc/calyx-cdi-test").exists()


def test_a_mount_the_kernel_cannot_idmap_is_refused_naming_the_device(cdx: CdiCx, proc_below: Path) -> None:
    spec = write_spec(
        cdx.cdi_low,
        "procfs.yaml",
        _spec(
            {
                "procfs": {"mounts": [_bind("/proc/sys/kernel", "/host-kernel", "ro", "bind")]},
                "rbind": {"mounts": [_bind(proc_below, "/top", "ro", "rbind")]},
                "bind": {"mounts": [_bind(proc_below, "/top", "ro", "bind")]},
            }
        ),
    )
    pod = _pod(cdx, userns=True)
    for device, where in (("procfs", "/host-kernel"), ("rbind", "/top")):
        err = _refused(cdx, pod, device)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (device, err.details())
        details = err.details() or ""
        for text in (f"mount {where} from CDI device {KIND}={device}", str(spec), "cannot be idmapped"):
            assert text in details, (text, details)
    # 'bind' takes the dir without its submounts, as runc would: nothing below it refuses idmapping
    cid = cdx.start(cdx.create(pod, _config(cdx, pod, "bind", "bind")))
    assert cdx.output(cid, "stat", "-c", "%u:%g", "/top", "/top/f").split() == ["0:0", "0:0"]
    assert cdx.output(cid, "ls", "/top/proc") == ""  # the procfs below was not taken along
    cdx.remove(cid)
    _remove_pod(cdx, pod)
    assert staging_mounts(cdx) == [] and audit(cdx) == []


@pytest.fixture
def host_nodes() -> Iterator[dict[str, str]]:
    """Device nodes of /dev/full's numbers in the host's /dev under names of this test's own: one any
    user may open, one only its host owner (root) may, one owned by root's group only."""
    tag = secrets.token_hex(4)
    nodes = {"open": 0o666, "root": 0o600, "group": 0o660}
    paths = {name: f"/dev/calyx-cdi-{tag}-{name}" for name in nodes}
    try:
        for name, mode in nodes.items():
            os.mknod(paths[name], stat.S_IFCHR | mode, FULL)
            os.chmod(paths[name], mode)
        yield paths
    finally:
        for path in paths.values():
            Path(path).unlink(missing_ok=True)


def test_device_nodes_that_work_in_a_user_namespace_and_those_refused(
    cdx: CdiCx, host_nodes: dict[str, str]
) -> None:
    major, minor = os.major(FULL), os.minor(FULL)
    absent = {"path": "/dev/calyx-cdi-absent", "type": "c", "major": major, "minor": minor}
    spec = write_spec(
        cdx.cdi_low,
        "nodes.yaml",
        _spec(
            {
                "open": {"deviceNodes": [{"path": host_nodes["open"]}]},
                "owned": {"deviceNodes": [{"path": host_nodes["root"]}]},
                "root": {"deviceNodes": [{"path": host_nodes["root"]}]},
                "group-r": {"deviceNodes": [{"path": host_nodes["group"], "permissions": "r"}]},
                "absent": {"deviceNodes": [absent]},
                "other": {"deviceNodes": [{"path": host_nodes["open"], "type": "c", "major": 1, "minor": 3}]},
                "aliased": {"deviceNodes": [{"path": "/dev/cdi-alias", "hostPath": host_nodes["open"]}]},
            }
        ),
    )
    host = host_base()
    pod = userns_pod(cdx, host)
    # a node others may use works as in any pod: /dev/full reads zeros and refuses writes
    cid = cdx.start(cdx.create(pod, _config(cdx, pod, "open", "open")))
    node = host_nodes["open"]
    assert cdx.output(cid, "sh", "-c", f"head -c 3 {node} | od -An -tx1").split() == ["00"] * 3
    full = cdx.exec(cid, "sh", "-c", f"echo x > {node}")
    assert full.exit_code != 0 and b"No space left" in full.stderr
    cdx.remove(cid)
    # refused, naming the device, its spec file and the reason, instead of a node nobody can open
    for device, reason in (
        ("root", "does not let others rw"),
        ("group-r", "does not let others r"),
        ("absent", "the host has no /dev/calyx-cdi-absent"),
        ("other", f"is c {major}:{minor}, not the c 1:3 the spec describes"),
        ("aliased", f"this node comes from {host_nodes['open']}"),
    ):
        err = _refused(cdx, pod, device)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (device, err.details())
        for text in (f"{KIND}={device}", str(spec), reason):
            assert text in (err.details() or ""), (text, err.details())
    # a node owned by one of the pod's ids follows its mode: the container's root owns it here
    os.chown(host_nodes["root"], host, host)
    cid = cdx.start(cdx.create(pod, _config(cdx, pod, "owned", "owned")))
    assert cdx.output(cid, "stat", "-c", "%u:%g %a", host_nodes["root"]).strip() == "0:0 600"
    assert cdx.output(cid, "sh", "-c", f"head -c 1 {host_nodes['root']} | od -An -tx1").split() == ["00"]
    cdx.remove(cid)
    _remove_pod(cdx, pod)
    assert staging_mounts(cdx) == [] and audit(cdx) == []
