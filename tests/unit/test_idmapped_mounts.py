"""Which mounts of a container in a pod user namespace are idmapped (cri/containers/idmapped.py): the CRI
mounts carrying the pod's own mappings, the pod's files and a CDI spec's binds; any other mapping is
refused naming the mount; a pod without a user namespace idmaps nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calyx_base.errors import FailedPrecondition, InvalidArgument
from cri.api import api_pb2 as pb
from cri.containers import cdi, idmapped
from cri.containers import spec as oci
from sandbox import mounts, namespaces
from sandbox import userns as sandbox_userns
from sandbox.userns import IdMap
from tests.unit.test_cdi import devices_of, spec_doc
from tests.unit.test_container_userns import GMAP, MAP, FakePod, built_spec


def _built(pod: FakePod, rootfs: Path, mounts: list[pb.Mount]) -> oci.BuiltSpec:
    return built_spec(pod, rootfs, tuple(mounts))


def _mount(host: Path, where: str, uids: list[dict[str, int]], gids: list[dict[str, int]]) -> pb.Mount:
    return pb.Mount(
        host_path=str(host),
        container_path=where,
        uidMappings=[pb.IDMapping(**m) for m in uids],
        gidMappings=[pb.IDMapping(**m) for m in gids],
    )


def _pod_with_files(tmp_path: Path, **kw: Any) -> FakePod:
    files = {}
    for name in ("hosts", "hostname", "resolv.conf"):
        (tmp_path / name).write_text("x\n")
        files[f"{name.replace('.', '_')}_path"] = str(tmp_path / name)
    return FakePod(
        hosts_path=files["hosts_path"],
        hostname_path=files["hostname_path"],
        resolv_conf_path=files["resolv_conf_path"],
        **kw,
    )


def test_mounts_with_the_pods_mappings_and_the_pods_files_are_idmapped(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    mounts = [_mount(tmp_path / "vol", "/vol", [MAP], [GMAP]), _mount(tmp_path / "vol", "/plain", [], [])]
    built = _built(_pod_with_files(tmp_path), tmp_path / "rootfs", mounts)
    assert sorted(m["destination"] for m in built.idmapped) == [
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/vol",
    ]
    # the pod's files, which nobody asked to idmap, are bound as they are where idmapping is refused
    assert sorted(m["destination"] for m in built.idmap_optional) == [
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
    ]
    # they are the spec's own entries, so staging can point them at the idmapped clone
    assert all(any(m is entry for entry in built.spec["mounts"]) for m in built.idmapped)


def test_a_pod_without_user_namespace_idmaps_nothing_and_refuses_mappings(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    pod = _pod_with_files(tmp_path, user_ns_path=None)
    pod.namespace_options["userns"] = {"mode": "NODE"}
    assert _built(pod, tmp_path / "rootfs", [_mount(tmp_path / "vol", "/plain", [], [])]).idmapped == []
    with pytest.raises(InvalidArgument, match=r"/vol: .* own user namespace"):
        _built(pod, tmp_path / "rootfs", [_mount(tmp_path / "vol", "/vol", [MAP], [GMAP])])


@pytest.mark.parametrize(
    ("uids", "gids"),
    [
        ([MAP], [MAP]),  # the gid mapping is the pod's uid one
        ([MAP], []),
        ([], [GMAP]),
        ([MAP, GMAP], [GMAP]),
        ([{**MAP, "length": 1}], [GMAP]),
        ([{**MAP, "container_id": 1}], [GMAP]),
    ],
)
def test_other_mappings_are_refused_naming_the_mount(
    tmp_path: Path, uids: list[dict[str, int]], gids: list[dict[str, int]]
) -> None:
    (tmp_path / "vol").mkdir()
    with pytest.raises(InvalidArgument, match="mount /data/vol: uid mappings"):
        _built(FakePod(), tmp_path / "rootfs", [_mount(tmp_path / "vol", "/data/vol", uids, gids)])


@pytest.fixture
def user_ns(short_tmp: Path) -> Iterator[Path]:
    pins = sandbox_userns.create(short_tmp, "p", IdMap(0, 600000, 10), IdMap(0, 600000, 10), [], "h")
    try:
        yield pins["user"]
    finally:
        namespaces.release(pins["user"])


def test_staged_mounts_are_idmapped_and_released(short_tmp: Path, user_ns: Path) -> None:
    vol = short_tmp / "vol"
    vol.mkdir()
    (vol / "f").write_text("x")
    container = short_tmp / "c"
    container.mkdir()
    mounts: list[dict[str, Any]] = [
        {"destination": "/vol", "source": str(vol)},
        {"destination": "/file", "source": str(vol / "f")},
    ]
    idmapped.stage(mounts, container, user_ns)
    try:
        assert [m["source"] for m in mounts] == [str(container / "idmapped" / n) for n in ("0", "1")]
        assert os.stat(Path(mounts[0]["source"]) / "f").st_uid == 600000  # root's file, through the map
        assert os.stat(mounts[1]["source"]).st_uid == 600000
    finally:
        idmapped.remove_dir(container)
    assert not container.exists()
    assert (vol / "f").read_text() == "x"  # the volume was unmounted before the dir was deleted


def test_a_refused_mount_fails_unless_it_is_optional(short_tmp: Path, user_ns: Path) -> None:
    container = short_tmp / "c"
    container.mkdir()
    hosts = {"destination": "/etc/hosts", "source": "/proc/sys/kernel/hostname"}  # procfs: no idmapping
    with pytest.raises(FailedPrecondition, match="mount /etc/hosts: host path /proc/sys/kernel/hostname"):
        idmapped.stage([hosts], container, user_ns)
    assert hosts["source"] == "/proc/sys/kernel/hostname"
    idmapped.stage([hosts], container, user_ns, optional=[hosts])
    staged = container / "idmapped" / "0"
    try:
        # staged as it is (a plain clone): runc finds it in the container dir, which the container's
        # root may pass, while the pod's own dir is root's alone
        assert hosts["source"] == str(staged)
        assert staged.read_text() == Path("/proc/sys/kernel/hostname").read_text()
        assert mounts.is_mounted(staged)
    finally:
        idmapped.release(container)  # a failed assertion must not leave the clone mounted
    assert not staged.exists()
    assert [p.name for p in container.iterdir()] == ["idmapped-sources.json"]  # status's host paths


def test_cdi_binds_are_idmapped_and_a_mount_they_replace_is_not(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    vol = _mount(tmp_path / "vol", "/vol", [MAP], [GMAP])
    built = _built(_pod_with_files(tmp_path), tmp_path / "rootfs", [vol])
    doc = spec_doc(
        devices={
            "d": {
                "mounts": [
                    {"hostPath": str(tmp_path / "vol"), "containerPath": "/cdi", "options": ["ro", "bind"]},
                    {"hostPath": "/usr", "containerPath": "/etc/hosts"},  # replaces the pod's file
                    {"hostPath": "tmpfs", "containerPath": "/scratch", "type": "tmpfs"},  # made in the pod
                ]
            }
        }
    )
    built.idmap_added(cdi.inject(built.spec, devices_of(tmp_path / "specs", doc)))
    assert sorted(m["destination"] for m in built.idmapped) == [
        "/cdi",
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/vol",
    ]
    assert all(any(m is entry for entry in built.spec["mounts"]) for m in built.idmapped)
    assert {m["source"] for m in built.idmapped if m["destination"] == "/etc/hosts"} == {"/usr"}
    assert sorted(m["destination"] for m in built.idmap_optional) == ["/etc/hostname", "/etc/resolv.conf"]
    origin = f"CDI device example.com/test=d ({tmp_path / 'specs' / '0.json'})"
    assert built.idmap_origins == {"/cdi": origin, "/etc/hosts": origin}


def test_a_bind_is_staged_without_its_submounts_and_a_cdi_refusal_names_the_device(
    short_tmp: Path, user_ns: Path, proc_below: Path
) -> None:
    container = short_tmp / "c"
    container.mkdir()
    origin = "CDI device example.com/test=d (/etc/cdi/x.json)"
    rbind: dict[str, Any] = {"destination": "/top", "source": str(proc_below), "options": ["rbind", "ro"]}
    with pytest.raises(FailedPrecondition) as err:
        idmapped.stage([rbind], container, user_ns, origins={"/top": origin})
    assert f"mount /top from {origin}: host path {proc_below} cannot be idmapped" in str(err.value)
    assert "a pod with a user namespace cannot use it" in str(err.value)
    idmapped.release(container)
    bind: dict[str, Any] = {"destination": "/top", "source": str(proc_below), "options": ["bind", "ro"]}
    idmapped.stage([bind], container, user_ns, origins={"/top": origin})
    staged = Path(bind["source"])
    assert os.stat(staged / "f").st_uid == 600000 and list((staged / "proc").iterdir()) == []
    idmapped.remove_dir(container)
    assert (proc_below / "f").read_text() == "x"
