"""What a container sees from inside: capabilities, privileges, users, read-only paths, seccomp, mounts,
namespaces and devices, each checked with a command run in the container."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx
from tests.net_fixtures import host_network_linux
from tests.waiting import wait_for

cx = container_fixtures.cx

# CAP_CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT
# MKNOD AUDIT_WRITE SETFCAP: the default set of containerd and Docker.
DEFAULT_CAPS = 0x00000000A80425FB


def status_field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in /proc/self/status")


def sleeper(cx: Cx, pod: tuple[str, object], name: str, **kw: object) -> str:
    return cx.run(pod, name, ["sleep", "1000"], **kw)  # type: ignore[arg-type]


def sc(**kw: object) -> pb.LinuxContainerConfig:
    return pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**kw))  # type: ignore[arg-type]


def test_capabilities_default_add_drop_all_and_no_new_privs(cx: Cx) -> None:
    pod = cx.pod()
    plain = sleeper(cx, pod, "plain")
    status = cx.output(plain, "cat", "/proc/self/status")
    assert int(status_field(status, "CapEff"), 16) == DEFAULT_CAPS
    assert int(status_field(status, "CapBnd"), 16) == DEFAULT_CAPS
    assert status_field(status, "NoNewPrivs") == "0"

    caps = pb.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["CHOWN", "CAP_KILL"])
    changed = sleeper(cx, pod, "changed", linux=sc(capabilities=caps, no_new_privs=True))
    status = cx.output(changed, "cat", "/proc/self/status")
    expected = (DEFAULT_CAPS | (1 << 12)) & ~(1 << 0) & ~(1 << 5)
    assert int(status_field(status, "CapEff"), 16) == expected
    assert status_field(status, "NoNewPrivs") == "1"
    # chown needs CAP_CHOWN
    assert cx.exec(changed, "chown", "1234", "/tmp").exit_code != 0

    none = sleeper(cx, pod, "none", linux=sc(capabilities=pb.Capability(drop_capabilities=["ALL"])))
    assert int(status_field(cx.output(none, "cat", "/proc/self/status"), "CapEff"), 16) == 0

    everything = sleeper(cx, pod, "all", linux=sc(capabilities=pb.Capability(add_capabilities=["ALL"])))
    eff = int(status_field(cx.output(everything, "cat", "/proc/self/status"), "CapEff"), 16)
    assert eff & (1 << 21)  # CAP_SYS_ADMIN


def test_users_groups_from_image_and_config(cx: Cx) -> None:
    pod = cx.pod()
    by_uid = sleeper(cx, pod, "uid", linux=sc(run_as_user=pb.Int64Value(value=1000)))
    assert (
        cx.output(by_uid, "id").strip()
        == "uid=1000(calyx) gid=1000(calyx) groups=1000(calyx),50000(predefined)"
    )
    strict = sleeper(
        cx,
        pod,
        "strict",
        linux=sc(
            run_as_user=pb.Int64Value(value=1000),
            supplemental_groups=[4242],
            supplemental_groups_policy=pb.Strict,
        ),
    )
    assert cx.output(strict, "id", "-G").split() == ["1000", "4242"]
    st = cx.status(strict).status
    assert (st.user.linux.uid, st.user.linux.gid) == (1000, 1000)
    by_name = sleeper(
        cx, pod, "name", linux=sc(run_as_username="www-data", run_as_group=pb.Int64Value(value=1000))
    )
    assert cx.output(by_name, "id", "-u").strip() == "33"
    assert cx.output(by_name, "id", "-g").strip() == "1000"
    image_user = cx.image("calyx-test/user-uid-gid:latest")
    from_image = sleeper(cx, pod, "image", image=image_user)
    assert cx.output(from_image, "id", "-u").strip() == "1003"
    assert cx.output(from_image, "id", "-g").strip() == "1003"
    unknown = cx.config("unknown", ["true"], linux=sc(run_as_username="nosuchuser"))
    assert cx.code(cx.create, pod, unknown) == grpc.StatusCode.INVALID_ARGUMENT


def test_readonly_rootfs_masked_and_readonly_paths(cx: Cx) -> None:
    pod = cx.pod()
    ro = sleeper(
        cx, pod, "ro", linux=sc(readonly_rootfs=True, readonly_paths=["/etc"], masked_paths=["/www"])
    )
    failed = cx.exec(ro, "touch", "/newfile")
    assert failed.exit_code != 0 and b"Read-only file system" in failed.stderr
    assert cx.exec(ro, "sh", "-c", "echo 1 > /proc/sys/kernel/domainname").exit_code != 0
    assert cx.output(ro, "cat", "/proc/timer_list") == ""
    assert cx.output(ro, "ls", "/www") == ""  # masked dirs are an empty read-only tmpfs
    mounts = cx.output(ro, "cat", "/proc/self/mountinfo")
    assert any(" /etc " in line and " ro," in line for line in mounts.splitlines())
    rw = sleeper(cx, pod, "rw")
    assert cx.exec(rw, "touch", "/newfile").exit_code == 0
    assert cx.output(rw, "cat", "/www/index.html") == "calyx test web server\n"


def test_seccomp_runtime_default_unconfined_and_localhost(cx: Cx, short_tmp: Path) -> None:
    pod = cx.pod()
    default = sleeper(cx, pod, "default", linux=sc(seccomp=pb.SecurityProfile(profile_type=0)))
    assert status_field(cx.output(default, "cat", "/proc/self/status"), "Seccomp") == "2"
    # unshare(2) is not in the default allow-list without CAP_SYS_ADMIN: EPERM
    blocked = cx.exec(default, "unshare", "-U", "true")
    assert blocked.exit_code != 0 and b"Operation not permitted" in blocked.stderr
    unconfined = sleeper(cx, pod, "unconfined", linux=sc(seccomp=pb.SecurityProfile(profile_type=1)))
    assert status_field(cx.output(unconfined, "cat", "/proc/self/status"), "Seccomp") == "0"
    assert cx.exec(unconfined, "unshare", "-U", "true").exit_code == 0

    profile = short_tmp / "no-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            }
        )
    )
    local = sc(seccomp=pb.SecurityProfile(profile_type=2, localhost_ref=str(profile)))
    no_mkdir = sleeper(cx, pod, "local", linux=local)
    assert cx.exec(no_mkdir, "mkdir", "/tmp/d").exit_code != 0
    missing = sc(seccomp=pb.SecurityProfile(profile_type=2, localhost_ref=str(short_tmp / "nope.json")))
    assert (
        cx.code(cx.create, pod, cx.config("missing", ["true"], linux=missing))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    (short_tmp / "bad.json").write_text("{not json")
    bad = sc(seccomp=pb.SecurityProfile(profile_type=2, localhost_ref=str(short_tmp / "bad.json")))
    assert cx.code(cx.create, pod, cx.config("bad", ["true"], linux=bad)) == grpc.StatusCode.INVALID_ARGUMENT


def test_privileged_needs_privileged_pod_and_gets_everything(cx: Cx) -> None:
    plain_pod = cx.pod()
    config = cx.config("priv", ["sleep", "1000"], linux=sc(privileged=True))
    assert cx.code(cx.create, plain_pod, config) == grpc.StatusCode.INVALID_ARGUMENT
    linux = host_network_linux()
    linux.security_context.privileged = True
    pod = cx.pod(linux=linux)
    cid = cx.start(cx.create(pod, config))
    status = cx.output(cid, "cat", "/proc/self/status")
    assert status_field(status, "Seccomp") == "0"
    assert int(status_field(status, "CapEff"), 16) & (1 << 21)
    # nothing is masked or read-only for a privileged container
    assert cx.exec(cid, "sh", "-c", "echo 1 > /proc/sys/vm/drop_caches").exit_code == 0
    assert cx.exec(cid, "sh", "-c", "test -c /dev/kmsg").exit_code == 0  # host devices


def test_mounts_readonly_symlink_missing_dir_and_rslave_propagation(cx: Cx, short_tmp: Path) -> None:
    pod = cx.pod()
    data = short_tmp / "data"
    data.mkdir()
    (data / "f").write_text("host file\n")
    link = short_tmp / "link"
    link.symlink_to(data)
    missing = short_tmp / "created" / "here"
    shared = short_tmp / "shared"
    shared.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "cxshared", str(shared)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        mounts = [
            pb.Mount(container_path="/ro", host_path=str(link), readonly=True),
            pb.Mount(container_path="/rw", host_path=str(data)),
            pb.Mount(container_path="/new", host_path=str(missing)),
            pb.Mount(
                container_path="/prop", host_path=str(shared), propagation=pb.PROPAGATION_HOST_TO_CONTAINER
            ),
        ]
        cid = cx.run(pod, "mounts", ["sleep", "1000"], mounts=mounts)
        assert missing.is_dir()
        assert cx.output(cid, "cat", "/ro/f") == "host file\n"
        assert cx.exec(cid, "touch", "/ro/x").exit_code != 0
        cx.output(cid, "touch", "/rw/from-container")
        assert (data / "from-container").exists()
        # a mount made on the host after the start shows up inside (rslave)
        (shared / "late").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "cxlate", str(shared / "late")], check=True)
        (shared / "late" / "hello").write_text("late\n")
        assert cx.output(cid, "cat", "/prop/late/hello") == "late\n"
        spec = json.loads(cx.status(cid, verbose=True).info["info"])["runtimeSpec"]
        assert spec["linux"]["rootfsPropagation"] == "rslave"
        st = cx.status(cid).status
        assert [m.container_path for m in st.mounts] == ["/ro", "/rw", "/new", "/prop"]
        cx.stop(cid)
        cx.remove(cid)
        # read-only, and recursively read-only: a mount below the host path is read-only only with rro
        nested = data / "nested"
        nested.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "cxnested", str(nested)], check=True)
        try:
            ro_mounts = [
                pb.Mount(container_path="/plain", host_path=str(data), readonly=True),
                pb.Mount(container_path="/rro", host_path=str(data), readonly=True, recursive_read_only=True),
            ]
            ro = cx.run(pod, "ro", ["sleep", "1000"], mounts=ro_mounts)
            assert cx.exec(ro, "touch", "/plain/x").exit_code != 0
            assert cx.exec(ro, "touch", "/plain/nested/x").exit_code == 0
            assert cx.exec(ro, "touch", "/rro/nested/y").exit_code != 0
            bad = pb.Mount(container_path="/bad", host_path=str(data), recursive_read_only=True)
            code = cx.code(cx.create, pod, cx.config("bad", ["true"], mounts=[bad]))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            cx.stop(ro)
            cx.remove(ro)
        finally:
            subprocess.run(["umount", str(nested)], check=False)
        # private host path refused for propagation (made private here: under systemd, as in the node
        # lab, every mount is shared)
        subprocess.run(["mount", "--bind", str(data), str(data)], check=True)
        try:
            subprocess.run(["mount", "--make-private", str(data)], check=True)
            both = pb.PROPAGATION_BIDIRECTIONAL
            private = pb.Mount(container_path="/p", host_path=str(data), propagation=both)
            code = cx.code(cx.create, pod, cx.config("private", ["true"], mounts=[private]))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
        finally:
            subprocess.run(["umount", str(data)], check=False)
    finally:
        subprocess.run(["umount", "-R", str(shared)], check=False)


@pytest.mark.parametrize(
    "failure",
    [
        # refused while the spec is built, after its mounts
        {"devices": [pb.Device(container_path="/dev/x", host_path="/etc/passwd", permissions="rw")]},
        # refused by runc, after the container's dirs were made
        {"working_dir": "/etc/passwd"},
    ],
    ids=["a device that is a file", "a working dir that is a file"],
)
def test_a_failed_create_leaves_no_host_path_it_made(
    cx: Cx, short_tmp: Path, failure: dict[str, object]
) -> None:
    """A mount's missing host path is made a directory for the container (kubelet's rule); a create that
    fails takes back the dirs it made and leaves what was there."""
    pod = cx.pod()
    kept = short_tmp / "kept"
    kept.mkdir()
    mounts = [pb.Mount(container_path="/new", host_path=str(kept / "made" / "deeper"))]
    config = cx.config("fails", ["true"], mounts=mounts, **failure)
    assert cx.code(cx.create, pod, config) == grpc.StatusCode.INVALID_ARGUMENT
    assert list(kept.iterdir()) == []
    listed = cx.rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod[0])))
    assert list(listed.containers) == []


def test_pod_namespaces_files_and_pid_modes(cx: Cx) -> None:
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
    )
    pod = cx.pod(linux=linux, host_network=False)
    a = cx.run(pod, "a", ["sleep", "1000"], linux=sc(namespace_options=pb.NamespaceOption(pid=pb.POD)))
    b = cx.run(pod, "b", ["sleep", "1000"], linux=sc(namespace_options=pb.NamespaceOption(pid=pb.POD)))
    for kind in ("net", "ipc", "uts", "pid"):
        assert cx.output(a, "readlink", f"/proc/self/ns/{kind}") == cx.output(
            b, "readlink", f"/proc/self/ns/{kind}"
        )
    assert cx.output(a, "readlink", "/proc/self/ns/net") != os.readlink("/proc/self/ns/net") + "\n"
    assert cx.output(a, "readlink", "/proc/self/ns/mnt") != cx.output(b, "readlink", "/proc/self/ns/mnt")
    # the shared PID namespace: each sees the other's sleep
    assert cx.output(a, "sh", "-c", "ps -o comm | grep -c sleep").strip() == "2"
    # one /dev/shm for the pod (its IPC namespace is shared)
    cx.output(a, "sh", "-c", "echo shared > /dev/shm/note")
    assert cx.output(b, "cat", "/dev/shm/note") == "shared\n"
    hostname = cx.output(a, "hostname").strip()
    assert hostname == cx.output(b, "cat", "/etc/hostname").strip()
    pod_info = json.loads(
        cx.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod[0], verbose=True)).info["info"]
    )
    assert pod_info  # the pod's own files are what the containers see:
    assert "/etc/resolv.conf" in cx.output(a, "cat", "/proc/self/mountinfo")
    assert "localhost" in cx.output(a, "cat", "/etc/hosts")

    shm_dir = cx.daemon.run_root / "shm" / pod[0]
    assert shm_dir.is_dir()
    cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
    cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
    assert not shm_dir.exists() and str(shm_dir) not in Path("/proc/self/mountinfo").read_text()

    host_pod = cx.pod()
    own = cx.run(host_pod, "own", ["sleep", "1000"])
    assert cx.output(own, "readlink", "/proc/self/ns/net") == os.readlink("/proc/self/ns/net") + "\n"
    # StartContainer can return before runc's init has exec'd the command (its comm is runc's till then)
    wait_for(lambda: cx.output(own, "cat", "/proc/1/comm").strip() == "sleep", "the pod's own PID 1: sleep")
    target = cx.run(
        host_pod,
        "target",
        ["sleep", "1000"],
        linux=sc(namespace_options=pb.NamespaceOption(pid=pb.TARGET, target_id=own)),
    )
    assert cx.output(target, "readlink", "/proc/self/ns/pid") == cx.output(
        own, "readlink", "/proc/self/ns/pid"
    )
    node = cx.run(
        host_pod, "node", ["sleep", "1000"], linux=sc(namespace_options=pb.NamespaceOption(pid=pb.NODE))
    )
    assert cx.output(node, "readlink", "/proc/self/ns/pid") == os.readlink("/proc/self/ns/pid") + "\n"


def test_devices_are_created_and_allowed(cx: Cx) -> None:
    pod = cx.pod()
    devices = [pb.Device(container_path="/dev/mynull", host_path="/dev/null", permissions="rwm")]
    cid = cx.run(pod, "dev", ["sleep", "1000"], devices=devices)
    assert cx.exec(cid, "sh", "-c", "test -c /dev/mynull && echo x > /dev/mynull").exit_code == 0
    assert cx.exec(cid, "sh", "-c", "mknod /dev/kmsg2 c 1 11 && cat /dev/kmsg2").exit_code != 0


def test_bidirectional_propagation_shows_container_mounts_on_the_host(cx: Cx, short_tmp: Path) -> None:
    shared = short_tmp / "both"
    shared.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "cxboth", str(shared)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        linux = host_network_linux()
        linux.security_context.privileged = True
        pod = cx.pod(linux=linux)
        mount = pb.Mount(
            container_path="/both", host_path=str(shared), propagation=pb.PROPAGATION_BIDIRECTIONAL
        )
        cid = cx.run(pod, "both", ["sleep", "1000"], mounts=[mount], linux=sc(privileged=True))
        cx.output(
            cid, "sh", "-c", "mkdir /both/inner && mount -t tmpfs inner /both/inner && echo x > /both/inner/f"
        )
        assert (shared / "inner" / "f").read_text() == "x\n"
        cx.output(cid, "umount", "/both/inner")
        spec = json.loads(cx.status(cid, verbose=True).info["info"])["runtimeSpec"]
        assert spec["linux"]["rootfsPropagation"] == "rshared"
    finally:
        subprocess.run(["umount", "-R", str(shared)], check=False)
