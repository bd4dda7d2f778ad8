"""The CRI's own devices (ContainerConfig.devices) in pods with a user namespace of their own, end to end
(real daemon, runc 1.1): runc cannot create device nodes there and would bind the host's node at the
*container* path, so Calyx binds the requested host node at the container path itself. The container
gets the node it asked for wherever it asks for it, a node no process of the pod could open is refused
naming it, hostile requests (two devices at one container path among them) get the status they get in a
pod without a user namespace, and nothing stays mounted or in /dev afterwards."""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx
from tests.fault_audit import audit
from tests.userns_pods import host_base, in_pod_userns, staging_mounts, userns_pod

NULL = os.stat("/dev/null").st_rdev
FULL = os.stat("/dev/full").st_rdev

cx = container_fixtures.cx


@dataclass
class Nodes:
    """Device nodes and dirs of this test's own in the host's /dev (unique names, removed after)."""

    tag: str
    made: list[Path]

    def path(self, name: str) -> Path:
        return Path(f"/dev/cx-{self.tag}-{name}")

    def node(self, name: str, rdev: int, mode: int, owner: tuple[int, int] = (0, 0)) -> Path:
        path = self.path(name)
        path.parent.mkdir(exist_ok=True)
        os.mknod(path, stat.S_IFCHR | mode, rdev)
        self.made.append(path)
        os.chmod(path, mode)
        os.chown(path, *owner)
        return path

    def dir(self, name: str) -> Path:
        path = self.path(name)
        path.mkdir()
        self.made.append(path)
        return path


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    made = Nodes(secrets.token_hex(4), [])
    try:
        yield made
    finally:
        for path in reversed(made.made):
            if path.is_dir() and not path.is_symlink():
                for sub in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
                    sub.rmdir() if sub.is_dir() and not sub.is_symlink() else sub.unlink()
                path.rmdir()
            else:
                path.unlink(missing_ok=True)


def _pod(cx: Cx, userns: bool) -> tuple[str, pb.PodSandboxConfig]:
    return userns_pod(cx, host_base()) if userns else cx.pod()


def _config(cx: Cx, pod: tuple[str, pb.PodSandboxConfig], *devices: pb.Device) -> pb.ContainerConfig:
    config = cx.config(f"dev-{secrets.token_hex(2)}", ["sleep", "1000"], devices=list(devices))
    in_userns = pod[1].linux.security_context.namespace_options.HasField("userns_options")
    return in_pod_userns(config, pod) if in_userns else config


def _dev(host: Path | str, inside: str, permissions: str = "rwm") -> pb.Device:
    return pb.Device(host_path=str(host), container_path=inside, permissions=permissions)


def _refused(cx: Cx, pod: tuple[str, pb.PodSandboxConfig], *devices: pb.Device) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        cx.create(pod, _config(cx, pod, *devices))
    assert cx.rt.ListContainers(pb.ListContainersRequest()).containers == []
    return err.value


def _remove_pod(cx: Cx, pod: tuple[str, pb.PodSandboxConfig]) -> None:
    cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
    cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)


def _mounted(nodes: Nodes) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if f"cx-{nodes.tag}-" in line]


def _numbers(rdev: int) -> str:
    return f"{os.major(rdev):x}:{os.minor(rdev):x}"


@pytest.mark.parametrize("userns", [False, True], ids=["host-userns", "pod-userns"])
def test_a_device_at_another_path_is_the_requested_node(cx: Cx, nodes: Nodes, userns: bool) -> None:
    null = nodes.node("null", NULL, 0o666)
    # the host has a node of other numbers at the container path: runc's own bind would take that one
    nodes.node("in", FULL, 0o666)
    tree = nodes.dir("tree")  # a dir: every node under it, at the same place under the container path
    (tree / "sub").mkdir()
    os.mknod(tree / "a", stat.S_IFCHR | 0o666, NULL)
    os.mknod(tree / "sub" / "b", stat.S_IFCHR | 0o666, FULL)
    for node in (tree / "a", tree / "sub" / "b"):
        node.chmod(0o666)
    (tree / "not-a-device").write_text("skipped\n")
    inside = str(nodes.path("in"))
    pod = _pod(cx, userns)
    devices = (_dev(null, inside), _dev(null, "/opt/cx-dev/null"), _dev(tree, "/dev/cx-tree"))
    cid = cx.start(cx.create(pod, _config(cx, pod, *devices)))

    numbers = cx.output(cid, "stat", "-c", "%F %t:%T", inside, "/opt/cx-dev/null", "/dev/cx-tree/a")
    assert numbers.splitlines() == [f"character special file {_numbers(NULL)}"] * 3
    assert cx.output(cid, "stat", "-c", "%t:%T", "/dev/cx-tree/sub/b").strip() == _numbers(FULL)
    assert cx.exec(cid, "test", "-e", "/dev/cx-tree/not-a-device").exit_code != 0
    # usable as /dev/null: writes vanish, reads end at once
    for path in (inside, "/opt/cx-dev/null", "/dev/cx-tree/a"):
        assert cx.output(cid, "sh", "-c", f"echo x > {path} && wc -c < {path}").strip() == "0", path
    full = cx.exec(cid, "sh", "-c", "echo x > /dev/cx-tree/sub/b")
    assert full.exit_code != 0 and b"No space left" in full.stderr

    spec = json.loads(cx.status(cid, verbose=True).info["info"])["runtimeSpec"]
    rules = spec["linux"]["resources"]["devices"]
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in rules
    if userns:  # bound by Calyx from the node asked for, not left to runc
        binds = {m["destination"]: m["source"] for m in spec["mounts"] if m["type"] == "bind"}
        assert binds[inside] == binds["/opt/cx-dev/null"] == str(null)
        assert binds["/dev/cx-tree/sub/b"] == str(tree / "sub" / "b")
        assert not [d for d in spec["linux"].get("devices") or [] if "cx" in d["path"]]

    cx.stop(cid)
    cx.remove(cid)
    _remove_pod(cx, pod)
    assert staging_mounts(cx) == [] and audit(cx) == [] and _mounted(nodes) == []


def test_a_node_no_process_of_the_pod_could_open_is_refused_naming_it(cx: Cx, nodes: Nodes) -> None:
    root = nodes.node("root", NULL, 0o600)
    disk = nodes.node("disk", NULL, 0o660, (0, 6))  # root:disk, as block devices are
    readable = nodes.node("readable", NULL, 0o644)
    tree = nodes.dir("tree")
    os.mknod(tree / "open", stat.S_IFCHR | 0o666, NULL)
    (tree / "open").chmod(0o666)
    os.mknod(tree / "closed", stat.S_IFCHR | 0o600, NULL)
    host = host_base()
    pod = userns_pod(cx, host)
    usable = _dev(nodes.node("usable", NULL, 0o666), "/dev/ok")
    for device, named, reason in (
        (_dev(root, "/dev/cx-root"), root, "does not let others rw"),
        (_dev(disk, "/dev/cx-disk", "r"), disk, "does not let others r"),
        (_dev(readable, "/dev/cx-readable", "rw"), readable, "does not let others rw"),
        (_dev(tree, "/dev/cx-tree"), tree / "closed", "does not let others rw"),
    ):
        err = _refused(cx, pod, usable, device)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (device, err.details())
        for text in (f"device {named}", reason, "no process of the pod could open it"):
            assert text in (err.details() or ""), (text, err.details())
    # others may read it: asked read-only, it works; a node one of the pod's ids owns follows its mode
    os.chown(root, host, host)
    cid = cx.start(cx.create(pod, _config(cx, pod, _dev(readable, "/dev/r", "r"), _dev(root, "/dev/own"))))
    assert cx.output(cid, "stat", "-c", "%u:%g %a", "/dev/own").strip() == "0:0 600"
    assert cx.output(cid, "sh", "-c", "cat /dev/r && echo x > /dev/own && echo ok") == "ok\n"
    cx.remove(cid)
    # no user namespace: the container's root opens them as before
    plain = cx.pod()
    root.chmod(0o600)
    os.chown(root, 0, 0)
    cid = cx.start(cx.create(plain, _config(cx, plain, _dev(root, "/dev/cx-root"), _dev(disk, "/dev/d"))))
    assert cx.output(cid, "sh", "-c", "echo x > /dev/cx-root && cat /dev/d && echo ok") == "ok\n"
    cx.remove(cid)
    _remove_pod(cx, plain)
    _remove_pod(cx, pod)
    assert staging_mounts(cx) == [] and audit(cx) == [] and _mounted(nodes) == []


def test_hostile_device_requests_get_the_same_status_in_both_kinds_of_pod(
    cx: Cx,
    nodes: Nodes,
    short_tmp: Path,
) -> None:
    null = nodes.node("null", NULL, 0o666)
    links = short_tmp / "links"
    links.mkdir()
    (links / "passwd").symlink_to("/etc/passwd")
    (links / "etc").symlink_to("/etc")
    (links / "dangling").symlink_to(short_tmp / "nosuch")
    (links / "null").symlink_to(null)
    plain = short_tmp / "plain"
    plain.write_text("not a device\n")
    requests = {
        "symlink to /etc/passwd": (_dev(links / "passwd", "/dev/x"), grpc.StatusCode.INVALID_ARGUMENT),
        "'..' to /etc/passwd": (_dev("/dev/../etc/passwd", "/dev/x"), grpc.StatusCode.INVALID_ARGUMENT),
        "a regular file": (_dev(plain, "/dev/x"), grpc.StatusCode.INVALID_ARGUMENT),
        "a dangling symlink": (_dev(links / "dangling", "/dev/x"), grpc.StatusCode.INVALID_ARGUMENT),
        "a missing path": (_dev(short_tmp / "nosuch", "/dev/x"), grpc.StatusCode.INVALID_ARGUMENT),
    }
    pods = {"host-userns": cx.pod(), "pod-userns": userns_pod(cx, host_base())}
    for kind, pod in pods.items():
        for what, (device, code) in requests.items():
            err = _refused(cx, pod, device)
            assert err.code() == code, (kind, what, err.details())
            assert device.host_path in (err.details() or "") or device.container_path in (err.details() or "")
        # a symlink (or '..') leading to a node binds that node; one to /etc, a dir of no devices, none
        devices = (_dev(links / "null", "/dev/l"), _dev(f"/etc/../dev/cx-{nodes.tag}-null", "/dev/u"))
        cid = cx.start(cx.create(pod, _config(cx, pod, *devices, _dev(links / "etc", "/dev/etc"))))
        assert cx.output(cid, "stat", "-c", "%t:%T", "/dev/l", "/dev/u").split() == [_numbers(NULL)] * 2
        assert cx.exec(cid, "test", "-e", "/dev/etc/passwd").exit_code != 0
        cx.remove(cid)
    # a privileged container never runs in a pod user namespace (Kubernetes forbids it too)
    config = _config(cx, pods["pod-userns"], _dev(null, "/dev/x"))
    config.linux.security_context.privileged = True
    with pytest.raises(grpc.RpcError) as err:
        cx.create(pods["pod-userns"], config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for pod in pods.values():
        _remove_pod(cx, pod)
    assert staging_mounts(cx) == [] and audit(cx) == [] and _mounted(nodes) == []
    assert sorted(p.name for p in Path("/dev").glob(f"cx-{nodes.tag}-*")) == [f"cx-{nodes.tag}-null"]


@pytest.mark.parametrize("userns", [False, True], ids=["host-userns", "pod-userns"])
def test_two_devices_at_one_container_path_are_refused_naming_it(cx: Cx, nodes: Nodes, userns: bool) -> None:
    """Stacked, runc would keep the first node and, in a pod user namespace, the last bind would win:
    refused alike in both kinds of pod, before anything is made."""
    null = nodes.node("null", NULL, 0o666)
    full = nodes.node("full", FULL, 0o666)
    tree = nodes.dir("tree")
    os.mknod(tree / "a", stat.S_IFCHR | 0o666, FULL)
    (tree / "a").chmod(0o666)
    pod = _pod(cx, userns)
    for devices, named in (
        ((_dev(null, "/dev/cx-dup"), _dev(full, "/dev/cx-dup")), "/dev/cx-dup"),
        ((_dev(null, "/dev/cx-dup"), _dev(null, "/dev/cx-dup", "r")), "/dev/cx-dup"),
        ((_dev(null, "/opt/cx/dup"), _dev(full, "/opt//cx/./dup/")), "/opt/cx/dup"),
        ((_dev(tree, "/dev/cx-tree"), _dev(null, "/dev/cx-tree/a")), "/dev/cx-tree/a"),  # one from a dir
    ):
        err = _refused(cx, pod, *devices)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (devices, err.details())
        assert named in (err.details() or ""), (named, err.details())
        assert staging_mounts(cx) == [] and audit(cx) == [] and _mounted(nodes) == []
    # each at a path of its own, the same nodes are fine
    devices = (_dev(null, "/dev/cx-dup"), _dev(full, "/opt/cx/dup"), _dev(tree, "/dev/cx-tree"))
    cid = cx.start(cx.create(pod, _config(cx, pod, *devices)))
    listed = cx.output(cid, "stat", "-c", "%t:%T", "/dev/cx-dup", "/opt/cx/dup", "/dev/cx-tree/a").split()
    assert listed == [_numbers(NULL), _numbers(FULL), _numbers(FULL)]
    cx.remove(cid)
    _remove_pod(cx, pod)
    assert staging_mounts(cx) == [] and audit(cx) == [] and _mounted(nodes) == []
