"""CDI devices end to end: spec files the test writes in the daemon's CDI dirs, devices requested through
ContainerConfig.CDI_devices and cdi.k8s.io/* annotations, and their edits checked from inside a running
container (ExecSync) and on the host (hooks run by runc). Bad requests and bad specs are INVALID_ARGUMENT
naming the device and the spec file, and leave nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import cdi_fixtures
from tests.cdi_fixtures import CdiCx, write_spec
from tests.fault_audit import audit
from tests.waiting import wait_for

cdx = cdi_fixtures.cdx

NULL = os.stat("/dev/null").st_rdev
KIND = "calyx.test/dev"


def _spec(devices: dict[str, dict[str, object]], version: str = "0.6.0", **top: object) -> dict[str, object]:
    return {
        "cdiVersion": version,
        "kind": KIND,
        "devices": [{"name": name, "containerEdits": edits} for name, edits in devices.items()],
        **top,
    }


def _config(
    cx: CdiCx, name: str, cdi: list[str] | None = None, annotations: dict[str, str] | None = None
) -> pb.ContainerConfig:
    config = cx.config(name, ["sleep", "1000"])
    config.CDI_devices.extend(pb.CDIDevice(name=d) for d in cdi or [])
    config.annotations.update(annotations or {})
    return config


def _env(cx: CdiCx, cid: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in cx.output(cid, "env").splitlines() if "=" in line)


def _refused(cx: CdiCx, pod: tuple[str, Any], config: pb.ContainerConfig) -> str:
    with pytest.raises(grpc.RpcError) as err:
        cx.create(pod, config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return str(err.value.details())


def test_device_nodes_mounts_env_and_hooks_seen_inside(cdx: CdiCx, short_tmp: Path) -> None:
    data = short_tmp / "cdi-data"
    data.mkdir()
    (data / "file").write_text("from the host\n")
    markers = short_tmp / "markers"
    markers.mkdir()
    host_hook_env = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"MARKERS={markers}"]
    spec = _spec(
        {
            # a /dev/null alias: type and numbers filled from the host node
            "null": {
                "deviceNodes": [{"path": "/dev/cdi-test-null", "hostPath": "/dev/null"}],
                "env": ["NULL=1"],
            },
            # a node given in full that the host has nowhere under this name, read permission only
            "loopctl": {
                "deviceNodes": [
                    {"path": "/dev/cdi-loopctl", "type": "c", "major": 10, "minor": 237, "permissions": "r"}
                ]
            },
            "data": {
                "mounts": [{"hostPath": str(data), "containerPath": "/cdi/data", "options": ["ro", "bind"]}],
                "env": ["DATA=/cdi/data"],
            },
            "hooks": {
                "hooks": [
                    # inside the container, after pivot_root: the image's sh writes into the rootfs
                    {
                        "hookName": "startContainer",
                        "path": "/bin/sh",
                        "args": ["sh", "-c", "echo started > /tmp/cdi-hook"],
                    },
                    # on the host: the container's state arrives on stdin
                    {
                        "hookName": "createRuntime",
                        "path": "/bin/sh",
                        "args": ["sh", "-c", 'cat > "$MARKERS/created.json"'],
                        "env": host_hook_env,
                    },
                    {
                        "hookName": "poststop",
                        "path": "/bin/sh",
                        "args": ["sh", "-c", 'cat > "$MARKERS/stopped.json"'],
                        "env": host_hook_env,
                        "timeout": 30,
                    },
                ]
            },
        },
        containerEdits={"env": ["SPEC_LEVEL=yes", "NULL=1"]},
    )
    write_spec(cdx.cdi_low, "calyx-test.yaml", spec)
    pod = cdx.pod()
    config = _config(
        cdx,
        "devices",
        [f"{KIND}=null", f"{KIND}=hooks"],
        {"cdi.k8s.io/calyx-test": f"{KIND}=data,{KIND}=loopctl"},
    )
    cid = cdx.start(cdx.create(pod, config))

    major, minor = os.major(NULL), os.minor(NULL)
    assert cdx.output(cid, "stat", "-c", "%F %t:%T", "/dev/cdi-test-null").strip() == (
        f"character special file {major:x}:{minor:x}"
    )
    assert cdx.output(cid, "sh", "-c", "echo x > /dev/cdi-test-null && echo written") == "written\n"
    # the cgroup rule grants read only: opening for reading works, for writing the kernel refuses
    assert cdx.output(cid, "sh", "-c", "exec 3< /dev/cdi-loopctl && echo opened") == "opened\n"
    denied = cdx.exec(cid, "sh", "-c", "exec 3> /dev/cdi-loopctl")
    assert denied.exit_code != 0 and b"not permitted" in denied.stderr
    assert cdx.output(cid, "cat", "/cdi/data/file") == "from the host\n"
    assert cdx.exec(cid, "touch", "/cdi/data/new").exit_code != 0  # the spec said ro
    env = _env(cdx, cid)
    assert (env["NULL"], env["DATA"], env["SPEC_LEVEL"]) == ("1", "/cdi/data", "yes")
    assert cdx.output(cid, "cat", "/tmp/cdi-hook") == "started\n"
    assert json.loads((markers / "created.json").read_text())["id"] == cid

    cdx.stop(cid)
    cdx.remove(cid)
    wait_for(lambda: (markers / "stopped.json").exists(), "the poststop hook ran", 60)
    assert json.loads((markers / "stopped.json").read_text())["id"] == cid
    assert audit(cdx) == []
    assert (data / "file").read_text() == "from the host\n"


def test_a_spec_changed_while_the_daemon_runs_takes_effect(cdx: CdiCx) -> None:
    write_spec(cdx.cdi_low, "v.json", _spec({"v": {"env": ["VERSION=one"]}}))
    pod = cdx.pod()
    first = cdx.start(cdx.create(pod, _config(cdx, "first", [f"{KIND}=v"])))
    assert _env(cdx, first)["VERSION"] == "one"
    # rewritten in place, and a new device; then the later directory overrides the earlier one
    write_spec(cdx.cdi_low, "v.json", _spec({"v": {"env": ["VERSION=two"]}, "w": {"env": ["NEW=yes"]}}))
    second = cdx.start(cdx.create(pod, _config(cdx, "second", [f"{KIND}=v", f"{KIND}=w"])))
    assert (_env(cdx, second)["VERSION"], _env(cdx, second)["NEW"]) == ("two", "yes")
    write_spec(cdx.cdi_high, "override.yaml", _spec({"v": {"env": ["VERSION=three"]}}))
    third = cdx.start(cdx.create(pod, _config(cdx, "third", [f"{KIND}=v"])))
    assert _env(cdx, third)["VERSION"] == "three"
    assert _env(cdx, first)["VERSION"] == "one"  # a running container keeps what it got
    (cdx.cdi_high / "override.yaml").unlink()
    (cdx.cdi_low / "v.json").unlink()
    details = _refused(cdx, pod, _config(cdx, "fourth", [f"{KIND}=v"]))
    assert f"{KIND}=v" in details


def test_unknown_malformed_and_conflicting_devices_are_refused_leaving_nothing(cdx: CdiCx) -> None:
    good = write_spec(
        cdx.cdi_low,
        "good.json",
        _spec(
            {
                "zero": {"deviceNodes": [{"path": "/dev/cdi-clash", "hostPath": "/dev/zero"}]},
                "null": {"deviceNodes": [{"path": "/dev/cdi-clash", "hostPath": "/dev/null"}]},
                "ok": {"env": ["OK=1"]},
                "shadow": {"deviceNodes": [{"path": "/dev/cdi-shadow", "hostPath": "/etc/shadow"}]},
            }
        ),
    )
    broken = write_spec(cdx.cdi_low, "broken.json", '{"cdiVersion": "0.6.0", "kind": "calyx.test/broken", ')
    wrong = write_spec(
        cdx.cdi_high,
        "wrong.yaml",
        {
            "cdiVersion": "0.6.0",
            "kind": "calyx.test/wrong",
            "devices": [
                {
                    "name": "x",
                    "containerEdits": {"mounts": [{"hostPath": "/", "containerPath": "/../../etc"}]},
                }
            ],
        },
    )
    pod = cdx.pod()
    cases = [
        ([f"{KIND}=missing"], {}, [f"{KIND}=missing", "no device 'missing'", str(good)]),
        (["calyx.test/broken=x"], {}, ["calyx.test/broken=x", str(broken), "not valid JSON"]),
        ([], {"cdi.k8s.io/x": "calyx.test/wrong=x"}, ["calyx.test/wrong=x", str(wrong), "'..'"]),
        ([f"{KIND}=zero", f"{KIND}=null"], {}, [f"{KIND}=zero", f"{KIND}=null", str(good), "/dev/cdi-clash"]),
        (
            [f"{KIND}=ok"],
            {"cdi.k8s.io/x": f"{KIND}=ok,not-qualified"},
            ["annotation cdi.k8s.io/x", "not-qualified"],
        ),
        (["nvidia.com/gpu"], {}, ["nvidia.com/gpu", "not a qualified device name"]),
        ([f"{KIND}=shadow"], {}, [f"{KIND}=shadow", str(good), "/etc/shadow is not a device node"]),
    ]
    for n, (field, notes, expected) in enumerate(cases):
        details = _refused(cdx, pod, _config(cdx, f"bad{n}", field, notes))
        for text in expected:
            assert text in details, (text, details)
        assert audit(cdx) == [], details
        assert list(cdx.rt.ListContainers(pb.ListContainersRequest()).containers) == []
    # the env conflict too, and the pod still takes a good container
    write_spec(cdx.cdi_high, "env.json", _spec({"a": {"env": ["X=1"]}, "b": {"env": ["X=2"]}}))
    details = _refused(cdx, pod, _config(cdx, "env", [f"{KIND}=a", f"{KIND}=b"]))
    assert "environment variable X" in details and str(cdx.cdi_high / "env.json") in details
    cid = cdx.start(cdx.create(pod, _config(cdx, "fine", [f"{KIND}=ok"])))
    assert _env(cdx, cid)["OK"] == "1"


def test_status_says_where_cdi_specs_are_read_and_that_image_volumes_work(cdx: CdiCx) -> None:
    info = cdx.rt.Status(pb.StatusRequest(verbose=True)).info
    features = json.loads(info["features"])
    assert features == {"cdiSpecDirs": [str(cdx.cdi_low), str(cdx.cdi_high)], "imageVolumes": True}
