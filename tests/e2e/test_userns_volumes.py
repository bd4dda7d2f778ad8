"""Volumes of pods with their own user namespace: CRI mounts that carry the pod's uid/gid mappings (as
kubelet sends them) are idmapped by Calyx through the pod's user namespace, with real runc 1.1 (which
cannot do it itself) and real user-namespaced pods.

Host files owned by root read as root's inside and the container's root writes them as host root; a
single file, read-only mounts and host-to-container propagation keep working; mounts without mappings
behave as before; other mappings are refused. The staging mounts Calyx makes for runc never outlive
CreateContainer, neither on success, nor after a failure, nor after a daemon kill -9 in the middle.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx
from tests.fault_audit import audit
from tests.image_fixtures import LoopbackRegistry, image_registry, registry_base  # noqa: F401
from tests.net_fixtures import Net
from tests.userns_pods import LENGTH, NOBODY, host_base, in_pod_userns, staging_mounts, userns_pod

cx = container_fixtures.cx

def _config(
    cx: Cx, pod: tuple[str, pb.PodSandboxConfig], name: str, mounts: list[pb.Mount]
) -> pb.ContainerConfig:
    # kubelet repeats the pod's namespace options on each container, and the pod's mappings on each mount
    return in_pod_userns(cx.config(name, ["sleep", "1000"], mounts=mounts), pod)


def _mapped(host_path: Path, container_path: str, host: int, **kw: object) -> pb.Mount:
    mapping = pb.IDMapping(container_id=0, host_id=host, length=LENGTH)
    return pb.Mount(
        host_path=str(host_path),
        container_path=container_path,
        uidMappings=[mapping],
        gidMappings=[mapping],
        **kw,
    )


def _volume(base: Path, name: str) -> Path:
    """A root-owned dir with a root-owned file, below a dir only root may enter (as kubelet's are)."""
    private = base / f"private-{name}"
    private.mkdir(mode=0o700)
    vol = private / name
    vol.mkdir(mode=0o755)
    (vol / "data").write_text("from the host\n")
    return vol


@pytest.fixture
def volumes(short_tmp: Path) -> Path:
    base = short_tmp / "volumes"
    base.mkdir()
    return base


@pytest.fixture
def tmpfs_volume(volumes: Path) -> Iterator[Path]:
    """A tmpfs, as kubelet's secret and projected (service account token) volumes are."""
    secret = volumes / "secret"
    secret.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "secret", str(secret)], check=True)
    try:
        (secret / "token").write_text("s3cr3t\n")
        (secret / "token").chmod(0o600)
        yield secret
    finally:
        subprocess.run(["umount", "-l", str(secret)], check=False)


def test_idmapped_dir_file_and_readonly_mounts(cx: Cx, volumes: Path, tmpfs_volume: Path) -> None:
    host = host_base()
    pod = userns_pod(cx, host)
    vol, ro = _volume(volumes, "vol"), _volume(volumes, "ro")
    single = volumes / "private-vol" / "termination-log"
    single.write_text("")
    plain = volumes / "plain"  # no mappings: reachable by others, as before
    plain.mkdir(mode=0o755)
    mounts = [
        _mapped(vol, "/vol", host),
        _mapped(single, "/dev/termination-log", host),
        _mapped(ro, "/ro", host, readonly=True),
        _mapped(ro, "/rro", host, readonly=True, recursive_read_only=True),
        _mapped(tmpfs_volume, "/var/run/secrets/token", host, readonly=True),
        pb.Mount(host_path=str(plain), container_path="/plain"),
    ]
    cid = cx.create(pod, _config(cx, pod, "vols", mounts))
    assert staging_mounts(cx) == []  # released once runc has made the container's own mounts
    cx.start(cid)

    # root's files are root's inside, and the container's root writes them as host root
    owners = cx.output(
        cid, "stat", "-c", "%u:%g", "/vol", "/vol/data", "/dev/termination-log", "/ro", "/ro/data"
    )
    assert owners.split() == ["0:0"] * 5
    assert cx.output(cid, "cat", "/vol/data") == "from the host\n"
    assert cx.output(cid, "sh", "-c", "echo new > /vol/new && mkdir /vol/sub && echo ok") == "ok\n"
    assert (vol / "new").read_text() == "new\n"
    assert [(vol / n).stat().st_uid for n in ("new", "sub")] == [0, 0]
    assert [(vol / n).stat().st_gid for n in ("new", "sub")] == [0, 0]
    # a single file, written as kubelet's termination log is
    assert cx.output(cid, "sh", "-c", "echo bye > /dev/termination-log && echo ok") == "ok\n"
    assert single.read_text() == "bye\n" and single.stat().st_uid == 0
    # read-only stays read-only
    for path in ("/ro/x", "/rro/x"):
        failed = cx.exec(cid, "touch", path)
        assert failed.exit_code != 0 and b"Read-only file system" in failed.stderr
    assert not (ro / "x").exists()
    # a tmpfs (secrets, tokens): a file only host root may read is the container root's to read
    assert cx.output(cid, "stat", "-c", "%u:%g %a", "/var/run/secrets/token/token").strip() == "0:0 600"
    assert cx.output(cid, "cat", "/var/run/secrets/token/token") == "s3cr3t\n"
    # the mounts are idmapped in the container's mount table
    mountinfo = cx.output(cid, "cat", "/proc/self/mountinfo").splitlines()
    for point in ("/vol", "/dev/termination-log", "/ro", "/rro", "/var/run/secrets/token"):
        assert any(f" {point} " in line and "idmapped" in line for line in mountinfo), point
    # crictl inspect shows the host paths, not the staging mounts runc bound (gone since create)
    spec = json.loads(cx.status(cid, verbose=True).info["info"])["runtimeSpec"]
    sources = {m["destination"]: m["source"] for m in spec["mounts"]}
    assert (sources["/vol"], sources["/dev/termination-log"]) == (str(vol), str(single))
    assert (sources["/var/run/secrets/token"], sources["/plain"]) == (str(tmpfs_volume), str(plain))
    assert not [m for m in spec["mounts"] if "/idmapped/" in m["source"]], spec["mounts"]
    # a mount without mappings is bound as it is: host root is unmapped (nobody) and may not be written
    assert cx.output(cid, "stat", "-c", "%u:%g", "/plain").strip() == NOBODY
    denied = cx.exec(cid, "touch", "/plain/x")
    assert denied.exit_code != 0 and b"Permission denied" in denied.stderr
    # the pod's own files, written by Calyx as host root, are root's inside and readable
    assert (
        cx.output(cid, "stat", "-c", "%u:%g", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf").split()
        == ["0:0"] * 3
    )
    assert "localhost" in cx.output(cid, "cat", "/etc/hosts")

    cx.stop(cid)
    assert staging_mounts(cx) == []
    cx.remove(cid)
    assert not (cx.daemon.root / "containers" / cid).exists()
    # removing the container removed nothing of the volumes
    assert sorted(p.name for p in vol.iterdir()) == ["data", "new", "sub"]
    assert (ro / "data").read_text() == "from the host\n" and single.read_text() == "bye\n"


@pytest.fixture
def shared_dir(volumes: Path) -> Iterator[Path]:
    """A dir on a shared mount of its own (host-to-container propagation needs one)."""
    shared = volumes / "shared"
    shared.mkdir()
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    subprocess.run(["mount", "--make-shared", str(shared)], check=True)
    try:
        yield shared
    finally:
        subprocess.run(["umount", "-R", "-l", str(shared)], check=False)


def test_idmapped_mount_with_submounts_and_host_to_container_propagation(cx: Cx, shared_dir: Path) -> None:
    host = host_base()
    pod = userns_pod(cx, host)
    before = shared_dir / "before"  # a submount of the volume when the container is made: idmapped too
    before.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "before", str(before)], check=True)
    (before / "f").write_text("sub\n")
    mount = _mapped(shared_dir, "/prop", host, propagation=pb.PROPAGATION_HOST_TO_CONTAINER)
    cid = cx.start(cx.create(pod, _config(cx, pod, "prop", [mount])))
    assert (
        cx.output(cid, "stat", "-c", "%u:%g", "/prop", "/prop/before", "/prop/before/f").split()
        == ["0:0"] * 3
    )
    later = shared_dir / "later"
    later.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "later", str(later)], check=True)
    (later / "seen").write_text("propagated\n")
    assert cx.output(cid, "cat", "/prop/later/seen") == "propagated\n"
    # a mount propagated later arrives as the host made it, not idmapped (measured on this kernel)
    assert cx.output(cid, "stat", "-c", "%u:%g", "/prop/later/seen").strip() == NOBODY
    cx.remove(cid)
    assert staging_mounts(cx) == []


def _refused_mounts(host: int, vol: Path) -> list[tuple[str, pb.Mount]]:
    def mapping(host_id: int = host, length: int = LENGTH, container_id: int = 0) -> pb.IDMapping:
        return pb.IDMapping(container_id=container_id, host_id=host_id, length=length)

    return [
        (
            "other host ids",
            pb.Mount(uidMappings=[mapping(host + LENGTH)], gidMappings=[mapping(host + LENGTH)]),
        ),
        ("uids only", pb.Mount(uidMappings=[mapping()])),
        ("shorter", pb.Mount(uidMappings=[mapping(length=1000)], gidMappings=[mapping(length=1000)])),
        ("two ranges", pb.Mount(uidMappings=[mapping(), mapping(host + LENGTH)], gidMappings=[mapping()])),
        (
            "not from 0",
            pb.Mount(uidMappings=[mapping(container_id=1)], gidMappings=[mapping(container_id=1)]),
        ),
    ]


def _assert_nothing_left(cx: Cx, vol: Path) -> None:
    assert cx.rt.ListContainers(pb.ListContainersRequest()).containers == []
    containers = cx.daemon.root / "containers"
    assert not containers.is_dir() or list(containers.iterdir()) == []
    assert staging_mounts(cx) == []
    assert (vol / "data").read_text() == "from the host\n"


def test_other_mappings_are_refused_naming_the_mount(cx: Cx, volumes: Path) -> None:
    host = host_base()
    pod = userns_pod(cx, host)
    vol = _volume(volumes, "vol")
    for shape, mount in _refused_mounts(host, vol):
        mount.host_path, mount.container_path = str(vol), "/data/volume"
        with pytest.raises(grpc.RpcError) as err:
            cx.create(pod, _config(cx, pod, "bad", [mount]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, shape
        assert "/data/volume" in (err.value.details() or ""), shape
        _assert_nothing_left(cx, vol)


def test_mappings_in_a_pod_without_user_namespace_are_refused(cx: Cx, volumes: Path) -> None:
    pod = cx.pod()
    vol = _volume(volumes, "vol")
    config = cx.config("bad", ["sleep", "1000"], mounts=[_mapped(vol, "/data/volume", host_base())])
    with pytest.raises(grpc.RpcError) as err:
        cx.create(pod, config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "/data/volume" in (err.value.details() or "") and "user namespace" in (err.value.details() or "")
    _assert_nothing_left(cx, vol)


def test_a_filesystem_that_cannot_be_idmapped_fails_naming_the_mount(cx: Cx, volumes: Path) -> None:
    """procfs refuses idmapping (mount_setattr: EINVAL): the create fails and leaves nothing."""
    host = host_base()
    pod = userns_pod(cx, host)
    vol = _volume(volumes, "vol")  # a good one before it: staged, then released by the undo
    mounts = [_mapped(vol, "/good", host), _mapped(Path("/proc/sys/kernel"), "/host-kernel", host)]
    with pytest.raises(grpc.RpcError) as err:
        cx.create(pod, _config(cx, pod, "procfs", mounts))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details() or ""
    assert "/host-kernel" in details and "idmapped" in details
    _assert_nothing_left(cx, vol)


# after_idmapped: staged, runc not run yet; after_conmon: runc created the container from them
@pytest.mark.parametrize("step", ["container.after_idmapped", "container.after_conmon"])
def test_kill9_while_mounts_are_staged_is_cleaned_at_restart(
    builtin_net,
    image_registry: LoopbackRegistry,  # noqa: F811
    short_tmp: Path,
    step: str,
) -> None:
    registries = {image_registry.host: {"insecure": True}}
    env = {"CALYX_FAILPOINTS": f"{step}=kill"}
    net: Net = builtin_net(env=env, config={"images": {"registries": registries}})
    logs = short_tmp / "podlogs"
    logs.mkdir()
    helper = Cx(net, image_registry, logs)
    try:
        _kill9_while_staged(helper, short_tmp, step)
    finally:
        helper.cleanup()


def _kill9_while_staged(cx: Cx, short_tmp: Path, step: str) -> None:
    daemon = cx.daemon
    host = host_base()
    pod = userns_pod(cx, host)
    base = short_tmp / "volumes"
    base.mkdir()
    vol = _volume(base, "vol")
    config = _config(cx, pod, "crash", [_mapped(vol, "/vol", host)])
    with pytest.raises(grpc.RpcError) as err:
        cx.create(pod, config)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert daemon.proc is not None and daemon.proc.wait(30) < 0
    assert f"failpoint={step}" in daemon.log()
    # the crash left the staging mounts: the volume's, the pod's own files' and its /dev/shm
    staged = staging_mounts(cx)
    assert len(staged) == 5 and any(f" {vol} " in line for line in staged), staged
    daemon.env.pop("CALYX_FAILPOINTS", None)
    daemon.start()
    assert staging_mounts(cx) == []
    assert cx.rt.ListContainers(pb.ListContainersRequest()).containers == []
    assert audit(cx) == []
    assert sorted(p.name for p in vol.iterdir()) == ["data"]  # recovery deleted nothing through it
    # kubelet creates the container again: it works, and its removal leaves nothing either
    cid = cx.start(cx.create(pod, config))
    assert cx.output(cid, "stat", "-c", "%u:%g", "/vol/data").strip() == "0:0"
    # a running container keeps its idmapped volume across a daemon kill -9 (its mount namespace holds
    # it; nothing of it is left in the daemon's)
    daemon.kill9()
    daemon.start()
    assert cx.status(cid).status.state == pb.CONTAINER_RUNNING
    assert cx.output(cid, "sh", "-c", "echo again > /vol/again && stat -c %u:%g /vol/again").strip() == "0:0"
    assert (vol / "again").stat().st_uid == 0
    assert staging_mounts(cx) == [] and audit(cx) == []
    cx.remove(cid)
    (vol / "again").unlink()
    assert staging_mounts(cx) == [] and audit(cx) == []
    assert os.listdir(vol) == ["data"]
