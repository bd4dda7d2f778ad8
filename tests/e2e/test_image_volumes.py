"""Image volumes (Mount.image) end to end with the project's test images: the image's layers read-only
at the container path (an overlay for several layers, a bind for one), image_sub_path honoured and
refused when it leads out of the image, the image kept while a container mounts it, nothing mounted
after removal or after a daemon kill -9, and user-namespaced pods seeing the files idmapped."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import cdi_fixtures, container_fixtures
from tests.cdi_fixtures import CdiCx, write_spec
from tests.container_fixtures import Cx
from tests.fault_audit import audit
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import Net

cx = container_fixtures.cx
cdx = cdi_fixtures.cdx

VOLUME = "calyx-test/volume:latest"  # two layers: content/{hello,second,dir/file,inside,out-abs,out-rel}
SINGLE = "calyx-test/busybox:latest"  # one layer
LENGTH = 65536


def _vol(image: str, path: str, sub: str = "", **kw: Any) -> pb.Mount:
    return pb.Mount(
        container_path=path, image=pb.ImageSpec(image=image), image_sub_path=sub, readonly=True, **kw
    )


def _image_id(cx: Cx, ref: str) -> str:
    return str(cx.daemon.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref))).image.id)


def _remove_image(cx: Cx, ref: str) -> grpc.StatusCode:
    try:
        cx.daemon.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=60)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _mounted(cx: Cx) -> list[str]:
    """This daemon's mounts in container dirs other than root filesystems."""
    base = str(cx.daemon.root / "containers")
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(base) and not p.endswith("/rootfs")]


def test_contents_read_only_sub_paths_status_and_image_kept_while_used(cx: Cx) -> None:
    volume, single = cx.image(VOLUME), cx.image(SINGLE)
    pod = cx.pod()
    mounts = [
        _vol(volume, "/vol"),
        _vol(single, "/single"),
        _vol(volume, "/sub", "content/dir"),
        _vol(volume, "/subfile", "content/hello"),
        _vol(volume, "/via-link", "content/inside"),  # a relative symlink that stays inside
    ]
    cid = cx.run(pod, "reader", ["sleep", "1000"], mounts=mounts)
    assert cx.output(cid, "cat", "/vol/content/hello", "/vol/content/second") == (
        "hello from an image volume\nfrom the second layer\n"
    )
    assert cx.exec(cid, "ls", "/vol/content/gone").exit_code != 0  # whited out by the second layer
    assert cx.output(cid, "cat", "/single/etc/hostname") == "calyx-test\n"
    assert cx.output(cid, "ls", "/sub") == "file\n"
    assert cx.output(cid, "cat", "/subfile") == "hello from an image volume\n"
    assert cx.output(cid, "cat", "/via-link/file") == "file in dir\n"
    for path in ("/vol/new", "/vol/content/hello", "/single/new", "/sub/new", "/subfile"):
        result = cx.exec(cid, "sh", "-c", f"echo x >> {path}")
        assert result.exit_code != 0 and b"Read-only file system" in result.stderr, (path, result.stderr)
    # the symlinks that lead out of the image resolve inside the container, not on the host
    assert cx.output(cid, "readlink", "/vol/content/out-abs") == "/etc\n"

    # ContainerStatus: each image mount with the ref of the image mounted (its repo digest)
    status = cx.status(cid).status
    refs = {m.container_path: m.image.image_ref for m in status.mounts}
    digests = {
        ref: cx.daemon.images.ImageStatus(
            pb.ImageStatusRequest(image=pb.ImageSpec(image=ref))
        ).image.repo_digests[0]
        for ref in (volume, single)
    }
    assert refs == {
        "/vol": digests[volume],
        "/single": digests[single],
        "/sub": digests[volume],
        "/subfile": digests[volume],
        "/via-link": digests[volume],
    }
    assert [m.image.image for m in status.mounts] == [volume, single, volume, volume, volume]
    assert _mounted(cx) == []  # runc's mount namespace holds the volumes; nothing staged stays

    volume_id = _image_id(cx, volume)
    for name in (volume, volume_id):
        assert _remove_image(cx, name) == grpc.StatusCode.FAILED_PRECONDITION
    cx.stop(cid)
    assert _remove_image(cx, volume) == grpc.StatusCode.FAILED_PRECONDITION  # exited still uses it
    cx.remove(cid)
    assert _mounted(cx) == [] and audit(cx) == []
    assert _remove_image(cx, volume) == grpc.StatusCode.OK
    assert _image_id(cx, volume) == ""


def test_missing_images_and_escaping_sub_paths_are_refused_leaving_nothing(cx: Cx) -> None:
    volume = cx.image(VOLUME)
    pod = cx.pod()
    cases = [
        (
            _vol(cx.registry.ref("calyx-test/never-pulled:latest"), "/v"),
            grpc.StatusCode.NOT_FOUND,
            "never-pulled",
        ),
        (_vol(volume, "/v", "content/out-abs"), grpc.StatusCode.INVALID_ARGUMENT, "leads out of image"),
        (
            _vol(volume, "/v", "content/out-abs/passwd"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "leads out of image",
        ),
        (_vol(volume, "/v", "content/out-rel"), grpc.StatusCode.INVALID_ARGUMENT, "leads out of image"),
        (_vol(volume, "/v", "../etc"), grpc.StatusCode.INVALID_ARGUMENT, "leads out of image"),
        (_vol(volume, "/v", "content/../../etc"), grpc.StatusCode.INVALID_ARGUMENT, "leads out of image"),
        (_vol(volume, "/v", "/content"), grpc.StatusCode.INVALID_ARGUMENT, "relative"),
        (_vol(volume, "/v", "content/nothing"), grpc.StatusCode.INVALID_ARGUMENT, "does not exist"),
        (_vol(volume, "/v", host_path="/etc"), grpc.StatusCode.INVALID_ARGUMENT, "not both"),
        (
            _vol(volume, "/v", propagation=pb.PROPAGATION_BIDIRECTIONAL),
            grpc.StatusCode.INVALID_ARGUMENT,
            "propagation must be private",
        ),
    ]
    for n, (mount, code, text) in enumerate(cases):
        with pytest.raises(grpc.RpcError) as err:
            cx.create(pod, cx.config(f"bad{n}", ["sleep", "1000"], mounts=[mount]))
        assert err.value.code() == code and text in str(err.value.details()), (n, err.value.details())
        assert _mounted(cx) == [] and audit(cx) == [], n
    assert cx.rt.ListContainers(pb.ListContainersRequest()).containers == []
    assert _remove_image(cx, volume) == grpc.StatusCode.OK  # nothing holds it


@pytest.mark.parametrize("step", ["container.after_image_volumes", "container.after_conmon"])
def test_kill9_while_staged_then_restart_leaves_nothing_mounted(
    builtin_net: Callable[..., Net], image_registry: LoopbackRegistry, short_tmp: Path, step: str
) -> None:
    registries = {image_registry.host: {"insecure": True}}
    net = builtin_net(env={"CALYX_FAILPOINTS": f"{step}=kill"}, config={"images": {"registries": registries}})
    (short_tmp / "podlogs").mkdir()
    helper = Cx(net, image_registry, short_tmp / "podlogs")
    try:
        volume = helper.image(VOLUME)
        pod = helper.pod()
        config = helper.config(
            "crash", ["sleep", "1000"], mounts=[_vol(volume, "/vol"), _vol(volume, "/s", "content")]
        )
        with pytest.raises(grpc.RpcError) as err:
            helper.create(pod, config)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        daemon = helper.daemon
        assert daemon.proc is not None and daemon.proc.wait(30) < 0
        assert any("/image-volumes/" in p for p in _mounted(helper))  # what the crash left
        daemon.env.pop("CALYX_FAILPOINTS")
        daemon.start()
        assert _mounted(helper) == [] and audit(helper) == []
        assert helper.rt.ListContainers(pb.ListContainersRequest()).containers == []
        # the half-made container holds nothing: kubelet may remove the image, then pull it again
        assert _remove_image(helper, volume) == grpc.StatusCode.OK
        volume = helper.image(VOLUME)
        cid = helper.start(helper.create(pod, config))
        # a kill -9 while the container runs: it keeps its volumes, the restarted daemon still knows
        # the image is in use, and the removal afterwards leaves nothing mounted
        daemon.kill9()
        daemon.start()
        assert helper.output(cid, "cat", "/s/hello") == "hello from an image volume\n"
        assert _mounted(helper) == [] and audit(helper) == []
        assert _remove_image(helper, volume) == grpc.StatusCode.FAILED_PRECONDITION
        helper.remove(cid)
        assert _mounted(helper) == [] and audit(helper) == []
        assert _remove_image(helper, volume) == grpc.StatusCode.OK
    finally:
        helper.cleanup()


def test_user_namespaced_pods_see_image_files_as_root_owned(cx: Cx) -> None:
    volume, single = cx.image(VOLUME), cx.image(SINGLE)
    host = 100000 + LENGTH * (1 + secrets.randbelow(30000))
    base = cx.daemon.root.parent.parent  # the container's root must pass the test's 0700 temp dir
    base.chmod(base.stat().st_mode | 0o001)
    mapping = pb.IDMapping(container_id=0, host_id=host, length=LENGTH)
    options = pb.NamespaceOption(
        network=pb.POD,
        pid=pb.CONTAINER,
        ipc=pb.POD,
        userns_options=pb.UserNamespace(mode=pb.POD, uids=[mapping], gids=[mapping]),
    )
    pod = cx.pod(
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=options)
        ),
        host_network=False,
    )
    mounts = [_vol(volume, "/vol"), _vol(single, "/single"), _vol(volume, "/sub", "content/dir")]
    for m in mounts:  # kubelet copies the pod's mappings onto every mount
        m.uidMappings.append(mapping)
        m.gidMappings.append(mapping)
    config = cx.config("userns", ["sleep", "1000"], mounts=mounts)
    config.linux.security_context.namespace_options.CopyFrom(options)
    cid = cx.start(cx.create(pod, config))
    owners = cx.output(cid, "stat", "-c", "%u:%g", "/vol/content/hello", "/single/bin/busybox", "/sub/file")
    assert owners.split() == ["0:0", "0:0", "0:0"]
    assert cx.output(cid, "cat", "/sub/file") == "file in dir\n"
    result = cx.exec(cid, "touch", "/vol/new")
    assert result.exit_code != 0 and b"Read-only file system" in result.stderr
    cx.remove(cid)
    assert _mounted(cx) == [] and audit(cx) == []


def test_a_container_with_a_cdi_device_and_an_image_volume_sees_both(cdx: CdiCx) -> None:
    volume = cdx.image(VOLUME)
    null = os.stat("/dev/null").st_rdev
    write_spec(
        cdx.cdi_high,
        "null.yaml",
        {
            "cdiVersion": "0.5.0",
            "kind": "calyx.test/null",
            "devices": [
                {
                    "name": "alias",
                    "containerEdits": {
                        "deviceNodes": [{"path": "/dev/cdi-test-null", "hostPath": "/dev/null"}]
                    },
                }
            ],
        },
    )
    pod = cdx.pod()
    config = cdx.config("both", ["sleep", "1000"], mounts=[_vol(volume, "/data", "content")])
    config.CDI_devices.append(pb.CDIDevice(name="calyx.test/null=alias"))
    cid = cdx.start(cdx.create(pod, config))
    assert cdx.output(cid, "stat", "-c", "%t:%T", "/dev/cdi-test-null").strip() == (
        f"{os.major(null):x}:{os.minor(null):x}"
    )
    assert cdx.output(cid, "cat", "/data/hello") == "hello from an image volume\n"
    cdx.stop(cid)
    cdx.remove(cid)
    assert _mounted(cdx) == [] and audit(cdx) == []
    assert _remove_image(cdx, volume) == grpc.StatusCode.OK
