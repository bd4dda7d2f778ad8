"""CDI without runc: names, spec checking, directory precedence and refresh, and the OCI edits."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from calyx_base.errors import FailedPrecondition, InvalidArgument
from cri.containers import cdi
from cri.containers.cdi import names, registry, schema

NULL = os.stat("/dev/null")


def spec_doc(
    kind: str = "example.com/test", devices: dict[str, Any] | None = None, **top: Any
) -> dict[str, Any]:
    devices = devices or {"null": {"env": ["A=1"]}}
    doc = {
        "cdiVersion": "0.6.0",
        "kind": kind,
        "devices": [{"name": n, "containerEdits": e} for n, e in devices.items()],
    }
    doc.update(top)
    return doc


def write(directory: Path, name: str, doc: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def qn(text: str) -> cdi.QualifiedName:
    return names.parse(text)


# --- names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["vendor.com/gpu=0", "a/b=c", "nvidia.com/gpu=GPU-1:2", "x.y/c.d=all", "foo.bar.baz/foo-bar123.B_az=x_1"],
)
def test_qualified_names(text: str) -> None:
    assert str(names.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "gpu0",
        "vendor.com/gpu",
        "vendor.com=gpu",
        "/dev/null",
        "1vendor/c=x",
        "v/c=-x",
        "v/c=x-",
        "v/c/d=x",
        "v/c=x y",
        "v/c=",
        "v/=x",
        "v" * 254 + "/c=x",
    ],
)
def test_bad_names_are_refused_naming_them(text: str) -> None:
    with pytest.raises(InvalidArgument, match="not a qualified device name"):
        names.parse(text)


def test_requested_field_then_annotations_once_each() -> None:
    wanted = names.requested(
        ["v.com/a=1"],
        {"cdi.k8s.io/z": "v.com/a=2, v.com/a=1", "cdi.k8s.io/b": "v.com/b=x", "other/key": "not a device"},
    )
    assert [str(w) for w in wanted] == ["v.com/a=1", "v.com/b=x", "v.com/a=2"]


def test_a_bad_annotation_is_refused_naming_the_key() -> None:
    with pytest.raises(InvalidArgument, match=r"annotation cdi\.k8s\.io/dev"):
        names.requested([], {"cdi.k8s.io/dev": "v.com/a=1,nonsense"})
    with pytest.raises(InvalidArgument, match="empty CDI device name"):
        names.requested([], {"cdi.k8s.io/dev": "v.com/a=1,,v.com/a=2"})


# --- spec checking --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(extra=1), "unknown field 'extra'"),
        (lambda d: d.update(cdiVersion="9.9.9"), "not a known CDI spec version"),
        (lambda d: d.update(kind="nokind"), "not vendor/class"),
        (lambda d: d.update(devices=[]), "at least one device"),
        (lambda d: d["devices"].append(d["devices"][0]), "defined twice"),
        (lambda d: d["devices"][0].update(containerEdits={}), "has no containerEdits"),
        (lambda d: d["devices"][0]["containerEdits"].update(env=["=x"]), "is not NAME=value"),
        (lambda d: d["devices"][0]["containerEdits"].update(deviceNodes=[{"path": "dev/x"}]), "absolute"),
        (lambda d: d["devices"][0]["containerEdits"].update(deviceNodes=[{"path": "/dev/../etc"}]), "'..'"),
        (
            lambda d: d["devices"][0]["containerEdits"].update(deviceNodes=[{"path": "/d", "type": "x"}]),
            "type",
        ),
        (
            lambda d: d["devices"][0]["containerEdits"].update(deviceNodes=[{"path": "/d", "major": True}]),
            "int",
        ),
        (
            lambda d: d["devices"][0]["containerEdits"].update(
                deviceNodes=[{"path": "/d", "permissions": "rx"}]
            ),
            "permissions",
        ),
        (
            lambda d: d["devices"][0]["containerEdits"].update(
                hooks=[{"hookName": "x", "path": "/bin/true"}]
            ),
            "hookName",
        ),
        (
            lambda d: d["devices"][0]["containerEdits"].update(
                hooks=[{"hookName": "poststop", "path": "/bin/true", "timeout": 0}]
            ),
            "out of range",
        ),
        (
            lambda d: d["devices"][0]["containerEdits"].update(
                mounts=[{"hostPath": "rel", "containerPath": "/x"}]
            ),
            "absolute",
        ),
        (lambda d: d["devices"][0]["containerEdits"].update(additionalGids=[1]), "too old"),
        (
            lambda d: d["devices"][0]["containerEdits"].update(
                netDevices=[{"hostInterfaceName": "a", "name": "b"}]
            ),
            "too old",
        ),
    ],
)
def test_malformed_specs_are_refused_naming_the_field(change: Any, message: str) -> None:
    doc = spec_doc()
    change(doc)
    with pytest.raises(schema.SpecError, match=message):
        schema.parse(doc)


def test_version_follows_the_fields_used() -> None:
    doc = spec_doc(devices={"0dev": {"deviceNodes": [{"path": "/dev/x", "hostPath": "/dev/null"}]}})
    doc["cdiVersion"] = "0.4.0"
    with pytest.raises(schema.SpecError, match=r"need 0\.5\.0"):
        schema.parse(doc)
    doc["cdiVersion"] = "v0.5.0"
    assert schema.parse(doc).version == "0.5.0"


# --- the registry ---------------------------------------------------------------------------------------


def test_later_directories_win_and_one_directory_twice_is_a_conflict(tmp_path: Path) -> None:
    low, high = tmp_path / "etc", tmp_path / "run"
    write(low, "a.json", spec_doc(devices={"x": {"env": ["FROM=low"]}, "y": {"env": ["FROM=low"]}}))
    write(
        high,
        "b.yaml",
        "cdiVersion: 0.6.0\nkind: example.com/test\ndevices:\n"
        "- name: x\n  containerEdits:\n    env: [FROM=high]\n",
    )
    reg = cdi.Registry([low, high])
    x, y = reg.resolve([qn("example.com/test=x"), qn("example.com/test=y")])
    assert x.edits.env == ("FROM=high",) and x.source.path == high / "b.yaml"
    assert y.edits.env == ("FROM=low",)
    write(high, "c.json", spec_doc(devices={"x": {"env": ["FROM=c"]}}))
    with pytest.raises(InvalidArgument, match=f"defined by both {high / 'b.yaml'} and {high / 'c.json'}"):
        reg.resolve([qn("example.com/test=x")])
    assert reg.resolve([qn("example.com/test=y")])[0].edits.env == ("FROM=low",)


def test_a_changed_spec_is_read_again_and_a_removed_one_forgotten(tmp_path: Path) -> None:
    path = write(tmp_path, "a.json", spec_doc(devices={"x": {"env": ["V=1"]}}))
    reg = cdi.Registry([tmp_path])
    assert reg.resolve([qn("example.com/test=x")])[0].edits.env == ("V=1",)
    path.write_text(json.dumps(spec_doc(devices={"x": {"env": ["V=22"]}})))
    assert reg.resolve([qn("example.com/test=x")])[0].edits.env == ("V=22",)
    path.unlink()
    with pytest.raises(InvalidArgument, match=r"no CDI spec in .* defines kind example\.com/test"):
        reg.resolve([qn("example.com/test=x")])


def test_unknown_devices_and_broken_files_are_named(tmp_path: Path) -> None:
    write(tmp_path, "good.json", spec_doc(devices={"x": {"env": ["V=1"]}}))
    reg = cdi.Registry([tmp_path])
    with pytest.raises(InvalidArgument, match=r"no device 'y' in .*good.json \(devices: x\)"):
        reg.resolve([qn("example.com/test=y")])
    write(tmp_path, "broken.yaml", "cdiVersion: 0.6.0\nkind: other.com/thing\ndevices: [\n")
    with pytest.raises(
        InvalidArgument, match=r"other.com/thing=z is unknown: spec file .*broken.yaml cannot"
    ):
        reg.resolve([qn("other.com/thing=z")])
    write(
        tmp_path, "bad.json", spec_doc(kind="other.com/thing", devices={"z": {"hooks": [{"hookName": "n"}]}})
    )
    with pytest.raises(
        InvalidArgument, match=r"bad.json cannot be used: devices\[0\].containerEdits.hooks\[0\]"
    ):
        reg.resolve([qn("other.com/thing=z")])
    assert reg.resolve([qn("example.com/test=x")])  # the others still work


def test_hostile_files_are_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.json")
    write(tmp_path, "huge.json", " " * (registry.MAX_SPEC_BYTES + 1))
    laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for n in range(1, 9):
        laughs += f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]\n"
    write(tmp_path, "laughs.yaml", laughs)
    write(tmp_path, "deep.yaml", "[" * 100 + "]" * 100)
    write(tmp_path, "python.yaml", "!!python/object/apply:os.system ['true']\n")
    write(tmp_path, "deep.json", "[" * 100000 + "]" * 100000)
    reg = cdi.Registry([tmp_path])
    with pytest.raises(InvalidArgument) as err:
        reg.resolve([qn("example.com/test=x")])
    text = str(err.value)
    for name, reason in [
        ("fifo.json", "not a regular file"),
        ("huge.json", "larger than"),
        ("laughs.yaml", "not valid YAML: more than 100000 values once its aliases are expanded"),
        ("deep.yaml", "not valid YAML: nested more than"),
        ("python.yaml", "not valid YAML"),
        ("deep.json", "not valid JSON"),
    ]:
        assert f"{tmp_path / name} cannot be used: {reason}" in text


def test_no_directories_means_cdi_is_off() -> None:
    with pytest.raises(InvalidArgument, match="CDI is off"):
        cdi.Registry([]).resolve([qn("a.com/b=c")])
    assert cdi.Registry([]).resolve([]) == []


# --- edits ----------------------------------------------------------------------------------------------


def oci_spec(**process: Any) -> dict[str, Any]:
    return {
        "process": {
            "env": ["PATH=/bin", "A=0"],
            "user": {"uid": 0, "gid": 0, "additionalGids": [0]},
            **process,
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/x", "options": ["rbind"]},
        ],
        "linux": {
            "namespaces": [{"type": "mount"}],
            "devices": [],
            "resources": {"devices": [{"allow": False}]},
        },
    }


def devices_of(tmp_path: Path, *docs: dict[str, Any]) -> list[cdi.Device]:
    for i, doc in enumerate(docs):
        write(tmp_path, f"{i}.json", doc)
    reg = cdi.Registry([tmp_path])
    wanted = [qn(f"{d['kind']}={dev['name']}") for d in docs for dev in d["devices"]]
    return reg.resolve(wanted)


def test_edits_applied_with_host_fill_in(tmp_path: Path) -> None:
    doc = spec_doc(
        devices={
            "null": {
                "env": ["A=1", "B=2"],
                "deviceNodes": [{"path": "/dev/cdi-null", "hostPath": "/dev/null", "permissions": "rw"}],
                "mounts": [
                    {"hostPath": "/etc", "containerPath": "/data/etc", "options": ["ro"]},
                    {"hostPath": "/usr", "containerPath": "/data", "type": "bind", "options": ["rbind"]},
                ],
                "hooks": [{"hookName": "createRuntime", "path": "/bin/true", "args": ["true"], "timeout": 5}],
                "additionalGids": [0, 44],
            }
        },
        containerEdits={
            "env": ["SHARED=yes"],
            "deviceNodes": [{"path": "/dev/fixed", "type": "c", "major": 1, "minor": 7, "fileMode": 0o600}],
        },
    )
    doc["cdiVersion"] = "0.7.0"
    spec = oci_spec()
    cdi.inject(spec, devices_of(tmp_path, doc))
    assert spec["process"]["env"] == ["PATH=/bin", "A=1", "SHARED=yes", "B=2"]
    assert spec["linux"]["devices"] == [
        {"path": "/dev/fixed", "type": "c", "major": 1, "minor": 7, "fileMode": 0o600},
        {
            "path": "/dev/cdi-null",
            "type": "c",
            "major": os.major(NULL.st_rdev),
            "minor": os.minor(NULL.st_rdev),
            "fileMode": stat.S_IMODE(NULL.st_mode),
        },
    ]
    assert spec["linux"]["resources"]["devices"][1:] == [
        {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
        {
            "allow": True,
            "type": "c",
            "major": os.major(NULL.st_rdev),
            "minor": os.minor(NULL.st_rdev),
            "access": "rw",
        },
    ]
    # the CDI mount replaces the container's at /data; parents before children
    assert [(m["destination"], m["source"]) for m in spec["mounts"]] == [
        ("/proc", "proc"),
        ("/data", "/usr"),
        ("/data/etc", "/etc"),
    ]
    assert spec["mounts"][2] == {
        "destination": "/data/etc",
        "type": "bind",
        "source": "/etc",
        "options": ["bind", "ro"],
    }
    assert spec["hooks"] == {"createRuntime": [{"path": "/bin/true", "args": ["true"], "timeout": 5}]}
    assert spec["process"]["user"]["additionalGids"] == [0, 44]


def test_device_nodes_take_the_process_owner(tmp_path: Path) -> None:
    spec = oci_spec(user={"uid": 1000, "gid": 2000})
    cdi.inject(spec, devices_of(tmp_path, spec_doc(devices={"n": {"deviceNodes": [{"path": "/dev/null"}]}})))
    assert spec["linux"]["devices"][0]["uid"] == 1000 and spec["linux"]["devices"][0]["gid"] == 2000


@pytest.mark.parametrize(
    ("first", "second", "what"),
    [
        ({"env": ["X=1"]}, {"env": ["X=2"]}, "environment variable X"),
        (
            {"deviceNodes": [{"path": "/dev/a", "hostPath": "/dev/null"}]},
            {"deviceNodes": [{"path": "/dev/a", "hostPath": "/dev/zero"}]},
            "device path /dev/a",
        ),
        (
            {"mounts": [{"hostPath": "/etc", "containerPath": "/m"}]},
            {"mounts": [{"hostPath": "/usr", "containerPath": "/m"}]},
            "mount destination /m",
        ),
    ],
)
def test_conflicting_edits_are_refused_naming_both(
    tmp_path: Path, first: Any, second: Any, what: str
) -> None:
    doc = spec_doc(devices={"one": first, "two": second})
    doc["cdiVersion"] = "0.7.0"
    spec = oci_spec()
    before = json.dumps(spec)
    with pytest.raises(InvalidArgument) as err:
        cdi.inject(spec, devices_of(tmp_path, doc))
    assert what in str(err.value)
    assert "CDI device example.com/test=one" in str(err.value) and "example.com/test=two" in str(err.value)
    assert str(tmp_path / "0.json") in str(err.value)
    assert json.dumps(spec) == before


def test_the_same_edit_twice_is_no_conflict(tmp_path: Path) -> None:
    same = {"env": ["X=1"], "deviceNodes": [{"path": "/dev/a", "hostPath": "/dev/null"}]}
    spec = oci_spec()
    cdi.inject(spec, devices_of(tmp_path, spec_doc(devices={"one": same, "two": same})))
    assert spec["process"]["env"].count("X=1") == 1 and len(spec["linux"]["devices"]) == 1


def test_missing_host_nodes_and_unsupported_edits(tmp_path: Path) -> None:
    missing = spec_doc(devices={"m": {"deviceNodes": [{"path": "/dev/calyx-no-such-node"}]}})
    with pytest.raises(InvalidArgument, match="host device /dev/calyx-no-such-node: No such file"):
        cdi.inject(oci_spec(), devices_of(tmp_path / "a", missing))
    net = spec_doc(devices={"n": {"netDevices": [{"hostInterfaceName": "eth9", "name": "net0"}]}})
    net["cdiVersion"] = "1.1.0"
    with pytest.raises(FailedPrecondition, match="netDevices"):
        cdi.inject(oci_spec(), devices_of(tmp_path / "b", net))
    aliased = spec_doc(devices={"u": {"deviceNodes": [{"path": "/dev/x", "hostPath": "/dev/null"}]}})
    spec = oci_spec()
    spec["linux"]["namespaces"].append({"type": "user", "path": "/proc/1/ns/user"})
    with pytest.raises(FailedPrecondition, match="pod user namespace"):
        cdi.inject(spec, devices_of(tmp_path / "c", aliased))


def test_bind_host_paths_are_resolved_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "dangling").symlink_to(tmp_path / "nosuch")
    doc = spec_doc(
        devices={
            "m": {
                "mounts": [
                    {"hostPath": str(tmp_path / "link"), "containerPath": "/m", "options": ["bind"]},
                    {"hostPath": "tmpfs", "containerPath": "/t", "type": "tmpfs"},  # not a path: kept
                ]
            }
        }
    )
    spec = oci_spec()
    added = cdi.inject(spec, devices_of(tmp_path / "specs", doc))
    assert {m["destination"]: m["source"] for m in spec["mounts"]}["/m"] == str(tmp_path / "real")
    # what was added, each with where it is from (the caller idmaps the binds in a pod user namespace)
    assert sorted(added) == ["/m", "/t"]
    assert added["/m"][0] is next(m for m in spec["mounts"] if m["destination"] == "/m")
    assert added["/m"][1] == f"CDI device example.com/test=m ({tmp_path / 'specs' / '0.json'})"
    assert cdi.inject(oci_spec(), []) == {}
    for name, text in (("dangling", f"does not exist (it leads to {tmp_path / 'nosuch'})"), ("nosuch", "")):
        doc = spec_doc(devices={"m": {"mounts": [{"hostPath": str(tmp_path / name), "containerPath": "/m"}]}})
        spec = oci_spec()
        before = json.dumps(spec)
        with pytest.raises(InvalidArgument) as err:
            cdi.inject(spec, devices_of(tmp_path / f"specs-{name}", doc))
        message = str(err.value)
        assert "CDI device example.com/test=m" in message and f"host path {tmp_path / name}" in message
        assert text in message and json.dumps(spec) == before


def userns_spec() -> dict[str, Any]:
    spec = oci_spec()
    spec["linux"]["namespaces"].append({"type": "user", "path": "/proc/1/ns/user"})
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 300000, "size": 65536}]
    return spec


def node(path: Path, mode: int, owner: tuple[int, int] = (0, 0), rdev: int = NULL.st_rdev) -> str:
    os.mknod(path, stat.S_IFCHR | mode, rdev)
    os.chmod(path, mode)
    os.chown(path, *owner)
    return str(path)


def test_device_nodes_in_a_pod_user_namespace_must_be_the_hosts_and_openable(tmp_path: Path) -> None:
    """runc binds the host's node there: what others may do with it is what the pod may do."""
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    null = (os.major(NULL.st_rdev), os.minor(NULL.st_rdev))
    fine: dict[str, dict[str, Any]] = {
        "open": {"path": node(nodes / "open", 0o666)},
        "read-only": {"path": node(nodes / "ro", 0o644), "permissions": "r"},
        "no-rule": {"path": node(nodes / "closed", 0o600), "permissions": "none"},
        "pod-root": {"path": node(nodes / "mine", 0o600, (200000, 300000))},
        "pod-group": {"path": node(nodes / "group", 0o660, (0, 300005))},
        "given": {"path": str(nodes / "open"), "type": "c", "major": null[0], "minor": null[1]},
    }
    for name, entry in fine.items():
        spec = userns_spec()
        cdi.inject(spec, devices_of(tmp_path / name, spec_doc(devices={name: {"deviceNodes": [entry]}})))
        assert spec["linux"]["devices"][0]["path"] == entry["path"], name
    refused: dict[str, tuple[dict[str, Any], str]] = {
        "root-only": ({"path": node(nodes / "root", 0o600)}, "mode 0600 does not let others rw"),
        "group": ({"path": node(nodes / "disk", 0o660, (0, 6))}, "(host uid 0, gid 6)"),
        "write": ({"path": str(nodes / "ro"), "permissions": "rw"}, "does not let others rw"),
        "absent": (
            {"path": str(nodes / "nosuch"), "type": "c", "major": 1, "minor": 3},
            f"the host has no {nodes / 'nosuch'}",
        ),
        "other": (
            {"path": str(nodes / "open"), "type": "c", "major": 1, "minor": 9},
            f"is c {null[0]}:{null[1]}, not the c 1:9 the spec describes",
        ),
        "block": ({"path": str(nodes / "open"), "type": "b"}, "type b but host device"),
        "file": (
            {"path": str(tmp_path / "plain"), "type": "c", "major": 1, "minor": 3},
            "is not a device node",
        ),
    }
    (tmp_path / "plain").write_text("")
    for name, (entry, reason) in refused.items():
        spec = userns_spec()
        before = json.dumps(spec)
        doc = spec_doc(devices={name: {"deviceNodes": [entry]}})
        with pytest.raises((FailedPrecondition, InvalidArgument)) as err:
            cdi.inject(spec, devices_of(tmp_path / name, doc))
        assert f"CDI device example.com/test={name}" in str(err.value) and reason in str(err.value), name
        assert json.dumps(spec) == before
    # the same nodes are fine without a user namespace, where runc makes the node the spec describes
    for name in ("root-only", "absent", "other"):
        doc = spec_doc(devices={name: {"deviceNodes": [refused[name][0]]}})
        cdi.inject(oci_spec(), devices_of(tmp_path / f"host-{name}", doc))


def test_refresh_costs_stats_not_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "a.json", spec_doc())
    reg = cdi.Registry([tmp_path])
    reg.resolve([qn("example.com/test=null")])
    loads: list[Path] = []
    original = registry.load
    monkeypatch.setattr(registry, "load", lambda p, prio: loads.append(p) or original(p, prio))
    for _ in range(3):
        reg.resolve([qn("example.com/test=null")])
    assert loads == []
    time.sleep(0.01)
    (tmp_path / "a.json").write_text(json.dumps(spec_doc(devices={"null": {"env": ["B=1"]}})))
    assert reg.resolve([qn("example.com/test=null")])[0].edits.env == ("B=1",)
    assert loads == [tmp_path / "a.json"]


def test_yaml_anchors_of_a_normal_size_are_fine(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        "cdiVersion: 0.6.0\nkind: example.com/test\ndevices:\n"
        "- name: a\n  containerEdits: &edits\n    env: [SHARED=1]\n"
        "- name: b\n  containerEdits: *edits\n",
    )
    a, b = cdi.Registry([tmp_path]).resolve([qn("example.com/test=a"), qn("example.com/test=b")])
    assert a.edits.env == b.edits.env == ("SHARED=1",)
