"""Containers of a pod with its own user namespace: the OCI spec joins it with the pod's mappings, the
container's own userns_options must agree with the pod's, and the dirs above its mounts are checked to
be reachable for the mapped root (refused clearly where they are not)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from calyx_base.errors import FailedPrecondition, InvalidArgument
from cri.api import api_pb2 as pb
from cri.containers import rootfs, userns
from cri.containers import spec as oci
from sandbox import mounts, namespaces
from sandbox import userns as sandbox_userns
from sandbox.userns import IdMap

MAP = {"container_id": 0, "host_id": 200000, "length": 65536}
GMAP = {"container_id": 0, "host_id": 300000, "length": 65536}


@dataclass
class FakePod:
    id: str = "p" * 64
    hostname: str = "h"
    netns_path: str | None = "/run/x/ns/net/p"
    ipc_ns_path: str | None = "/run/x/ns/ipc/p"
    uts_ns_path: str | None = "/run/x/ns/uts/p"
    pid_ns_path: str | None = None
    user_ns_path: str | None = "/run/x/ns/user/p"
    namespace_options: dict[str, Any] = field(
        default_factory=lambda: {
            "network": "POD",
            "pid": "CONTAINER",
            "ipc": "POD",
            "userns": {"mode": "POD", "uids": [MAP], "gids": [GMAP]},
        }
    )
    resolv_conf_path: str | None = None
    hosts_path: str | None = None
    hostname_path: str | None = None
    linux: dict[str, Any] = field(default_factory=dict)


def _build(pod: FakePod, rootfs: Path, **security: Any) -> dict[str, Any]:
    return built_spec(pod, rootfs, **security).spec


def built_spec(
    pod: FakePod,
    rootfs: Path,
    mounts: tuple[pb.Mount, ...] = (),
    devices: tuple[pb.Device, ...] = (),
    **security: Any,
) -> oci.BuiltSpec:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="c"),
        command=["sleep", "1"],
        mounts=mounts,
        devices=devices,
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**security)),
    )
    config.linux.security_context.namespace_options.pid = pb.CONTAINER
    inputs = oci.SpecInputs(
        container_id="c" * 64,
        config=config,
        image_config={},
        image_name="img",
        pod=pod,
        rootfs=rootfs,
        cgroups_path="/x",
        resources={},
    )
    return oci.build(inputs)


def test_the_spec_joins_the_pods_user_namespace_with_its_mappings(tmp_path: Path) -> None:
    spec = _build(FakePod(), tmp_path)
    assert {"type": "user", "path": "/run/x/ns/user/p"} in spec["linux"]["namespaces"]
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 200000, "size": 65536}]
    assert spec["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 300000, "size": 65536}]
    assert userns.root_owner(FakePod()) == (200000, 300000)


def test_without_a_pod_user_namespace_the_spec_has_none(tmp_path: Path) -> None:
    pod = FakePod(user_ns_path=None)
    pod.namespace_options["userns"] = {"mode": "NODE"}
    spec = _build(pod, tmp_path)
    assert all(ns["type"] != "user" for ns in spec["linux"]["namespaces"])
    assert "uidMappings" not in spec["linux"] and userns.root_owner(pod) is None


def _ns(mode: int, uids: list[dict[str, int]] | None = None) -> pb.NamespaceOption:
    maps = [pb.IDMapping(**m) for m in (uids or [])]
    return pb.NamespaceOption(
        pid=pb.CONTAINER, userns_options=pb.UserNamespace(mode=mode, uids=maps, gids=maps)
    )


@pytest.mark.parametrize(
    ("pod", "requested", "words"),
    [
        (FakePod(), _ns(pb.NODE), "host's user namespace"),
        (FakePod(), _ns(pb.CONTAINER), "CONTAINER"),
        (FakePod(), _ns(pb.POD, [{"container_id": 0, "host_id": 1, "length": 2}]), "differ"),
        (FakePod(user_ns_path=None), _ns(pb.POD, [MAP]), "has none"),
    ],
)
def test_a_container_cannot_disagree_with_the_pods_user_namespace(
    tmp_path: Path, pod: FakePod, requested: pb.NamespaceOption, words: str
) -> None:
    with pytest.raises(InvalidArgument, match=words):
        _build(pod, tmp_path, namespace_options=requested)


def test_the_pods_own_request_repeated_is_accepted(tmp_path: Path) -> None:
    pod = FakePod()
    pod.namespace_options["userns"]["gids"] = [MAP]
    _build(pod, tmp_path, namespace_options=_ns(pb.POD, [MAP]))


def test_privileged_is_refused_in_a_pod_user_namespace(tmp_path: Path) -> None:
    pod = FakePod()
    pod.linux = {"security_context": {"privileged": True}}
    with pytest.raises(InvalidArgument, match="privileged"):
        _build(pod, tmp_path, privileged=True)


def _node(path: Path, mode: int, owner: tuple[int, int] = (0, 0)) -> str:
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(1, 3))
    os.chmod(path, mode)
    os.chown(path, *owner)
    return str(path)


def test_cri_devices_are_bind_mounts_of_the_nodes_asked_for(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes"
    (nodes / "sub").mkdir(parents=True)
    one = _node(nodes / "one", 0o666)
    _node(nodes / "sub" / "two", 0o604)
    (nodes / "sub" / "text").write_text("skipped\n")
    (tmp_path / "link").symlink_to(one)
    devices = (
        pb.Device(host_path=str(tmp_path / "link"), container_path="/dev/in", permissions="rwm"),
        pb.Device(host_path=str(nodes / "sub"), container_path="/dev/d", permissions="r"),
    )
    built = built_spec(FakePod(), tmp_path / "rootfs", devices=devices)
    binds = [{"destination": "/dev/in", "type": "bind", "source": one, "options": ["bind"]}]
    binds.append(
        {
            "destination": "/dev/d/two",
            "type": "bind",
            "source": str(nodes / "sub" / "two"),
            "options": ["bind"],
        }
    )
    assert built.spec["mounts"][-2:] == binds and built.device_binds == binds  # after every other mount
    assert built.spec["linux"]["devices"] == []
    rules = built.spec["linux"]["resources"]["devices"]
    assert rules[1:] == [
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "r"},
    ]
    # a CDI node at one's path replaces it, as it replaces a linux.devices entry without a user namespace
    built.spec["linux"]["devices"].append({"path": "/dev/in", "type": "c", "major": 1, "minor": 5})
    built.yield_device_binds()
    assert [m["destination"] for m in built.spec["mounts"] if m["type"] == "bind"] == ["/dev/d/two"]
    # without a user namespace: linux.devices entries, as ever
    plain = FakePod(user_ns_path=None)
    plain.namespace_options["userns"] = {"mode": "NODE"}
    spec = built_spec(plain, tmp_path / "rootfs", devices=devices).spec
    assert [d["path"] for d in spec["linux"]["devices"]] == ["/dev/in", "/dev/d/two"]
    assert all(m["type"] != "bind" or "/dev/" not in m["destination"] for m in spec["mounts"])


@pytest.mark.parametrize(
    ("mode", "owner", "permissions", "refused"),
    [
        (0o600, (0, 0), "rwm", "does not let others rw"),
        (0o660, (0, 6), "r", "does not let others r"),
        (0o644, (0, 0), "w", "does not let others w"),
        (0o644, (0, 0), "rm", None),
        (0o600, (200000, 0), "rw", None),  # the container's root owns it
        (0o060, (0, 300005), "rw", None),  # one of the pod's groups owns it
        (0o600, (0, 0), "m", None),
    ],
)
def test_a_node_no_process_of_the_pod_could_open_is_refused(
    tmp_path: Path, mode: int, owner: tuple[int, int], permissions: str, refused: str | None
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    node = _node(tree / "node", mode, owner)
    for host in (node, str(tree)):  # asked for itself or as one node of a dir
        device = pb.Device(host_path=host, container_path="/dev/x", permissions=permissions)
        if refused is None:
            built_spec(FakePod(), tmp_path / "rootfs", devices=(device,))
            continue
        with pytest.raises(FailedPrecondition, match=refused) as err:
            built_spec(FakePod(), tmp_path / "rootfs", devices=(device,))
        assert f"device {node} (at /dev/x" in str(err.value)


def test_check_reachable_takes_the_roots_uid_group_and_others_into_account(short_tmp: Path) -> None:
    short_tmp.chmod(0o711)  # /tmp/cx-*: pytest's own tmp_path sits below a 0700 dir
    root_id = 600000
    foreign = short_tmp / "foreign"
    containers = foreign / "containers"
    bundle = containers / "c"
    bundle.mkdir(parents=True)
    containers.chmod(0o711)
    os.chown(bundle, 0, root_id)
    bundle.chmod(0o710)  # as cri/statedirs.private_dir makes it for a user-namespaced pod
    foreign.chmod(0o700)
    with pytest.raises(FailedPrecondition, match=str(foreign)):
        userns.check_reachable([bundle / "rootfs"], (root_id, root_id))
    foreign.chmod(0o711)
    userns.check_reachable([bundle / "rootfs"], (root_id, root_id))  # through the group's x bit
    with pytest.raises(FailedPrecondition, match=str(bundle)):  # another pod's root: no way through
        userns.check_reachable([bundle / "rootfs"], (root_id + 1, root_id + 1))
    assert os.stat(bundle).st_mode & 0o777 == 0o710  # checked, never opened up


def test_layers_are_idmapped_through_a_user_namespace_and_the_fds_closed(short_tmp: Path) -> None:
    layer = short_tmp / "layer"
    layer.mkdir()
    (layer / "f").write_text("x")
    pins = sandbox_userns.create(short_tmp, "p", IdMap(0, 600000, 10), IdMap(0, 600000, 10), [], "h")
    try:
        with rootfs.idmapped_layers([layer], pins["user"]) as lowers:
            (lower,) = lowers
            assert lower.startswith("/proc/self/fd/")
            assert os.stat(Path(lower) / "f").st_uid == 600000  # root's file, seen through the mapping
        # closed on exit (the number may have been reused since, but not for this layer's clone)
        assert not os.path.exists(lower) or os.stat(lower).st_ino != layer.stat().st_ino
    finally:
        namespaces.release(pins["user"])


def test_layers_are_used_as_they_are_when_idmapping_fails(short_tmp: Path) -> None:
    not_a_userns = short_tmp / "plain-file"
    not_a_userns.write_text("")
    with rootfs.idmapped_layers([short_tmp], not_a_userns) as lowers:
        assert lowers == [str(short_tmp)]
    with rootfs.idmapped_layers([short_tmp], None) as lowers:
        assert lowers == [str(short_tmp)]


# --- kernels whose overlayfs refuses detached layers (before 6.15, e.g. Debian 12's 6.1) ----------------


def _kernel_before_6_15(monkeypatch: pytest.MonkeyPatch, attached_too: bool = False) -> list[str]:
    """mount(2) refuses overlay lowers named /proc/self/fd/N (detached mounts) with EINVAL, as 6.1's
    clone_private_mount does (``attached_too``: every idmapped overlay); the options of each mount that
    went through, and whether its staging base was shared, are recorded."""
    real = mounts.mount_fs
    seen: list[str] = []

    def mount_fs(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
        if fstype == "overlay" and ("/proc/self/fd/" in data or (attached_too and rootfs.LAYERS_DIR in data)):
            raise mounts.MountFailed(f"mount overlay on {target} failed: Invalid argument", errno.EINVAL)
        if rootfs.LAYERS_DIR in data:
            base = data.split("lowerdir=", 1)[1].split(":", 1)[0].rsplit("/", 1)[0]
            seen.append("shared" if mounts.mount_of(base).shared else "private")
        real(source, target, fstype, flags, data)

    monkeypatch.setattr(mounts, "mount_fs", mount_fs)
    monkeypatch.setattr(rootfs._Kernel, "attach_layers", False)
    return seen


@pytest.fixture
def shared_dir(short_tmp: Path) -> Iterator[Path]:
    """A dir on a shared mount of its own, as every mount is under systemd."""
    where = short_tmp / "shared"
    where.mkdir()
    mounts.bind(str(where), where)
    subprocess.run(["mount", "--make-shared", str(where)], check=True)
    try:
        yield where
    finally:
        mounts.unmount(where)


def _layer_and_pins(base: Path) -> tuple[Path, dict[str, Path]]:
    layer = base / "layer"
    layer.mkdir()
    (layer / "f").write_text("x")
    return layer, sandbox_userns.create(base, "p", IdMap(0, 600000, 10), IdMap(0, 600000, 10), [], "h")


def test_rootfs_layers_are_attached_privately_where_overlayfs_refuses_detached_ones(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _kernel_before_6_15(monkeypatch)
    layer, pins = _layer_and_pins(shared_dir)
    container_dir = shared_dir / "c"
    target = container_dir / "rootfs"
    try:
        rootfs.mount_overlay([layer], container_dir, target, owner=(600000, 600000), user_ns=pins["user"])
        assert os.stat(target / "f").st_uid == 600000  # root's file, idmapped through the pod's userns
        assert seen == ["private"]  # the clones never propagated to the shared mount's peers
        assert not (container_dir / rootfs.LAYERS_DIR).exists()  # released once overlayfs has its own
        assert rootfs._Kernel.attach_layers  # learned: the next container attaches at once
        second = shared_dir / "c2"
        rootfs.mount_overlay([layer], second, second / "rootfs", user_ns=pins["user"])
        assert os.stat(second / "rootfs" / "f").st_uid == 600000 and seen == ["private", "private"]
        mounts.unmount(second / "rootfs")
    finally:
        mounts.unmount(target)
        namespaces.release(pins["user"])
    below = [m.mount_point for m in mounts.mountinfo() if m.mount_point.startswith(f"{shared_dir}/")]
    assert below == []


def test_layers_that_overlayfs_refuses_even_attached_are_failed_precondition(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kernel_before_6_15(monkeypatch, attached_too=True)
    layer, pins = _layer_and_pins(shared_dir)
    container_dir = shared_dir / "c"
    try:
        with pytest.raises(FailedPrecondition, match=r"overlayfs \(.*\) refuses the image's layers idmapped"):
            rootfs.mount_overlay([layer], container_dir, container_dir / "rootfs", user_ns=pins["user"])
        assert not (container_dir / rootfs.LAYERS_DIR).exists()
        assert not mounts.is_mounted(container_dir / "rootfs")
    finally:
        namespaces.release(pins["user"])
