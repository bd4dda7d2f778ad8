"""The OCI spec builder's rules that need no runc: command, env, users, capabilities, seccomp, OOM, and
that it makes nothing (the dirs it names are made, and taken back, by CreateContainer)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from calyx_base.errors import InvalidArgument
from cri.api import api_pb2 as pb
from cri.containers import capabilities as caps
from cri.containers.binds import host_path_ready, make_host_path, remove_made
from cri.containers.seccomp_default import default_profile
from cri.containers.spec import (
    SpecInputs,
    build,
    clamp_oom_score_adj,
    current_oom_score_adj,
    process_args,
    process_env,
)
from cri.containers.users import make_inside, resolve_user
from tests.containers.harness import HostPod


def cfg(**kw: object) -> pb.ContainerConfig:
    return pb.ContainerConfig(**kw)  # type: ignore[arg-type]


IMAGE = {"Entrypoint": ["/entry"], "Cmd": ["default", "args"], "Env": ["PATH=/img", "A=1", "B=2"]}


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ([], [], ["/entry", "default", "args"]),
        ([], ["mine"], ["/entry", "mine"]),
        (["/cmd"], [], ["/cmd"]),
        (["/cmd"], ["x", "y"], ["/cmd", "x", "y"]),
    ],
)
def test_command_and_args_follow_kubelet(command: list[str], args: list[str], expected: list[str]) -> None:
    assert process_args(cfg(command=command, args=args), IMAGE) == expected


def test_no_command_anywhere_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        process_args(cfg(), {"Cmd": None})


def test_env_image_first_cri_wins_path_and_hostname_defaults() -> None:
    env = process_env(
        cfg(envs=[pb.KeyValue(key="A", value=b"x"), pb.KeyValue(key="C", value=b"\xff")]), IMAGE, "h"
    )
    assert env == ["PATH=/img", "A=x", "B=2", "C=\ufffd", "HOSTNAME=h"]
    assert process_env(cfg(), {}, "")[0].startswith("PATH=/usr/local/sbin:")


def test_capability_arithmetic() -> None:
    assert caps.compute([], [], False) == [
        c for c in caps.DEFAULT_CAPABILITIES if c in caps.host_capabilities()
    ]
    assert "CAP_NET_ADMIN" in caps.compute(["net_admin"], [], False)
    assert "CAP_CHOWN" not in caps.compute([], ["CHOWN"], False)
    assert caps.compute(["NET_ADMIN"], ["ALL"], False) == ["CAP_NET_ADMIN"]
    assert set(caps.compute(["ALL"], [], False)) == set(caps.host_capabilities())
    with pytest.raises(InvalidArgument):
        caps.compute(["NOT_A_CAP"], [], False)


def test_default_seccomp_denies_namespaces_and_keys_unless_capable() -> None:
    plain = default_profile(caps.DEFAULT_CAPABILITIES)
    assert plain["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = set(plain["syscalls"][0]["names"])
    for name in ("read", "write", "execve", "clone", "socket", "chroot"):
        assert name in allowed or any(name in r["names"] for r in plain["syscalls"])
    for name in (
        "mount",
        "unshare",
        "setns",
        "keyctl",
        "add_key",
        "kexec_load",
        "init_module",
        "bpf",
        "reboot",
    ):
        assert name not in allowed
    admin = default_profile([*caps.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])
    assert {"mount", "unshare", "setns"} <= set(admin["syscalls"][0]["names"])


def test_oom_score_adj_is_never_below_ours() -> None:
    own = current_oom_score_adj()
    assert clamp_oom_score_adj(-1000) == own
    assert clamp_oom_score_adj(999) == 999
    assert clamp_oom_score_adj(5000) == 1000


def test_users_from_passwd_and_group(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\nbob:x:10:20::/:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("g20:x:20:\nextra:x:30:bob\nother:x:40:alice\n")
    bob = resolve_user(tmp_path, "bob", None, "", None, [], False)
    assert (bob.uid, bob.gid, bob.additional_gids) == (10, 20, [30])
    strict = resolve_user(tmp_path, "bob", None, "", None, [7], True)
    assert strict.additional_gids == [7]
    by_uid = resolve_user(tmp_path, "", 10, "", 99, [], False)
    assert (by_uid.uid, by_uid.gid) == (10, 99)
    numeric = resolve_user(tmp_path, "1000:extra", None, "", None, [], False)
    assert (numeric.uid, numeric.gid) == (1000, 30)
    with pytest.raises(InvalidArgument):
        resolve_user(tmp_path, "", None, "nobody", None, [], False)
    # /etc/passwd as a symlink that points outside the rootfs resolves inside it
    (tmp_path / "etc" / "passwd").unlink()
    (tmp_path / "real").write_text("carol:x:5:5::/:/bin/sh\n")
    (tmp_path / "etc" / "passwd").symlink_to("/real")
    assert resolve_user(tmp_path, "carol", None, "", None, [], False).uid == 5


def test_dirs_made_in_the_image_never_follow_links_out_of_it(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    outside = tmp_path / "outside"
    rootfs.mkdir()
    outside.mkdir()
    (rootfs / "abs").symlink_to(outside)  # absolute: means <rootfs><outside> inside the image
    (rootfs / "rel").symlink_to("../../outside")  # relative: .. stops at the image's root
    make_inside(rootfs, "/abs/sub")
    make_inside(rootfs, "/rel/deeper/file", file=True)
    assert list(outside.iterdir()) == []
    assert (rootfs / str(outside).lstrip("/") / "sub").is_dir()
    assert (rootfs / "outside" / "deeper" / "file").is_file()


def test_the_builder_makes_nothing_and_names_the_dirs_to_make(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real").mkdir()
    missing = tmp_path / "host" / "missing"
    config = cfg(
        command=["true"],
        working_dir="/work/here",
        mounts=[
            pb.Mount(container_path="/a/b", host_path=str(tmp_path / "link" / "new")),
            pb.Mount(container_path="/a", host_path=str(missing)),
        ],
    )
    inputs = SpecInputs(
        container_id="c" * 64,
        config=config,
        image_config={"Volumes": {"/vol/one": {}, "relative": {}}},
        image_name="img",
        pod=HostPod(id="p" * 64, cgroup_parent="", log_directory=""),  # no namespaces, no files
        rootfs=rootfs,
        cgroups_path="/x",
        resources={},
    )
    built = build(inputs)
    assert list(rootfs.iterdir()) == []
    assert not (tmp_path / "host").exists() and list((tmp_path / "real").iterdir()) == []
    assert built.rootfs_dirs == ["/vol/one", "/work/here"]
    assert built.host_dirs == [str(missing), str(tmp_path / "link" / "new")]  # by depth, as mounted
    sources = {m["destination"]: m["source"] for m in built.spec["mounts"]}
    assert sources["/a"] == str(missing) and sources["/a/b"] == str(tmp_path / "real" / "new")


def test_a_made_host_path_is_taken_back_down_to_what_was_there(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    made = make_host_path(tmp_path / "kept" / "made" / "deeper")
    assert made == [tmp_path / "kept" / "made" / "deeper", tmp_path / "kept" / "made"]
    assert (tmp_path / "kept" / "made" / "deeper").is_dir()
    assert make_host_path(tmp_path / "kept" / "made" / "deeper") == []
    remove_made(made)
    assert list((tmp_path / "kept").iterdir()) == []
    # one something was put in stays, with the dirs above it
    made = make_host_path(tmp_path / "kept" / "used" / "dir")
    (tmp_path / "kept" / "used" / "dir" / "file").write_text("x")
    remove_made(made)
    assert (tmp_path / "kept" / "used" / "dir" / "file").is_file()


class CreateFailed(Exception):
    pass


def fail(create: AbstractContextManager[list[Path]]) -> None:
    """End ``create``'s hold as a create that failed does (the error passes on)."""
    assert not create.__exit__(CreateFailed, CreateFailed(), None)


def test_a_failed_create_leaves_the_host_dirs_another_create_in_flight_needs(tmp_path: Path) -> None:
    top = tmp_path / "made"
    shared, beside = top / "shared", top / "beside"
    # A makes top/shared; B finds it made and needs it; A fails: it stays for B, and after B.
    a = host_path_ready(str(shared))
    assert a.__enter__() == [shared, top]
    with host_path_ready(str(shared)) as b_made:
        assert b_made == []
        fail(a)
        assert shared.is_dir()
    assert shared.is_dir()
    shared.rmdir()
    top.rmdir()

    # A makes top/shared and top; B makes top/beside only; A fails: shared goes, top stays (B needs
    # what is under it); then B fails too: beside goes, top (A's) stays, which is what containerd leaves.
    a = host_path_ready(str(shared))
    assert a.__enter__() == [shared, top]
    b = host_path_ready(str(beside))
    assert b.__enter__() == [beside]
    fail(a)
    assert not shared.exists() and beside.is_dir()
    fail(b)
    assert not beside.exists() and top.is_dir()
    top.rmdir()

    # Alone, a failed create takes back all it made; a create that succeeds keeps them.
    with pytest.raises(CreateFailed), host_path_ready(str(shared)):
        raise CreateFailed
    assert not top.exists()
    with host_path_ready(str(shared)):
        pass
    assert shared.is_dir()
