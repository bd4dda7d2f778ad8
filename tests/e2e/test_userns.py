"""Pod user namespaces (userns_options mode POD), end to end: containers of such a pod run in one user
namespace with the pod's single uid and gid mapping, root inside is an unprivileged host uid, the
container's root can write its own rootfs, the pod network works, and nothing is left after removal.
Every other shape and mode is refused with INVALID_ARGUMENT and leaves no trace."""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import socket
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx
from tests.daemon import Daemon
from tests.image_fixtures import image_registry, registry_base  # noqa: F401
from tests.net_fixtures import in_netns, pod_config, pod_traces
from tests.streaming_clients import portforward_get, spdy
from tests.waiting import wait_for

cx = container_fixtures.cx

LENGTH = 65536
NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1)


def _host_base() -> int:
    """A host id range of our own (100000 + a random multiple of 65536), so that concurrent tests never
    share one and a process seen from the host can be attributed."""
    return 100000 + LENGTH * (1 + secrets.randbelow(30000))


def _userns_linux(host_id: int, pid: int = pb.CONTAINER) -> pb.LinuxPodSandboxConfig:
    mapping = pb.IDMapping(container_id=0, host_id=host_id, length=LENGTH)
    options = pb.NamespaceOption(
        network=pb.POD,
        pid=pid,
        ipc=pb.POD,
        userns_options=pb.UserNamespace(mode=pb.POD, uids=[mapping], gids=[mapping]),
    )
    return pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=options)
    )


def _container_config(
    cx: Cx, pod: tuple[str, pb.PodSandboxConfig], name: str, command: list[str]
) -> pb.ContainerConfig:
    config = cx.config(name, command)
    # kubelet repeats the pod's namespace options, user namespace included, on each container
    config.linux.security_context.namespace_options.CopyFrom(pod[1].linux.security_context.namespace_options)
    return config


def _host_uid(pid: int) -> tuple[str, str]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uid = next(line for line in status if line.startswith("Uid:")).split()[1]
    gid = next(line for line in status if line.startswith("Gid:")).split()[1]
    return uid, gid


def _reachable(cx: Cx) -> None:
    """The test's private temp dir (mkdtemp: 0700) sits above the daemon's state dirs: the container's
    root, an unprivileged host uid, must be able to pass through it (Calyx opens its own dirs)."""
    base = cx.daemon.root.parent.parent
    base.chmod(base.stat().st_mode | 0o001)


def _layer_dirs(cx: Cx) -> list[Path]:
    layers = cx.daemon.root / "images" / "layers"
    return [p for p in layers.iterdir() if p.is_dir()] if layers.is_dir() else []


def _run_userns_pod(cx: Cx, pid: int) -> None:
    _reachable(cx)
    host = _host_base()
    pod = cx.pod(linux=_userns_linux(host, pid=pid), host_network=False)
    pod_id = pod[0]
    pin = cx.daemon.run_root / "ns" / "user" / pod_id
    assert pin.exists()

    cid = cx.start(cx.create(pod, _container_config(cx, pod, "userns", ["sleep", "1000"])))
    for which in ("uid_map", "gid_map"):
        assert cx.output(cid, "cat", f"/proc/self/{which}").split() == ["0", str(host), str(LENGTH)]
    assert cx.output(cid, "id", "-u").strip() == "0"
    if pid == pb.POD:  # the pod's PID namespace, owned by its user namespace, with catatonit as PID 1
        assert cx.output(cid, "cat", "/proc/1/comm").strip() == "catatonit"
    assert cx.output(cid, "id", "-g").strip() == "0"

    # seen from the host, the container's root is the mapped, unprivileged uid
    init = json.loads(cx.status(cid, verbose=True).info["info"])["pid"]
    assert _host_uid(init) == (str(host), str(host))

    # the container's root writes its own rootfs (the overlay's upper dir is its own) and /tmp
    assert cx.output(cid, "sh", "-c", "echo hi > /written && cat /written") == "hi\n"
    assert cx.output(cid, "sh", "-c", "echo hi > /tmp/written && cat /tmp/written") == "hi\n"
    assert cx.output(cid, "sh", "-c", "echo hi > /dev/shm/written && cat /dev/shm/written") == "hi\n"
    # the image layers are idmapped through the pod's user namespace: root's files are root's inside,
    # and root changes them (copied up with the mapped ids; the shared layer stays as it was)
    assert cx.output(cid, "stat", "-c", "%u:%g", "/bin", "/etc/passwd").split() == ["0:0", "0:0"]
    assert (
        cx.output(cid, "sh", "-c", "echo x > /bin/written && echo more >> /etc/passwd && echo ok") == "ok\n"
    )
    upper = cx.daemon.root / "containers" / cid / "upper"
    assert (upper / "etc" / "passwd").stat().st_uid == host
    assert (upper / "bin" / "written").stat().st_uid == host
    assert all(not (Path(d) / "bin" / "written").exists() for d in _layer_dirs(cx))
    # capabilities are relative to the user namespace: root holds CAP_MKNOD there, yet the kernel
    # allows device nodes only to holders of it in the host's user namespace
    cap_eff = int(cx.output(cid, "sh", "-c", "grep CapEff /proc/self/status").split()[1], 16)
    assert cap_eff & (1 << 27)  # CAP_MKNOD
    mknod = cx.exec(cid, "mknod", "/tmp/null2", "c", "1", "3")
    assert mknod.exit_code != 0 and b"not permitted" in mknod.stderr

    # the pod network works: eth0 with the pod's address, sysfs of the pod's netns mounted
    status = cx.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    ip = status.network.ip
    assert ip
    reported = status.linux.namespaces.options.userns_options
    assert reported == pod[1].linux.security_context.namespace_options.userns_options
    assert f"inet {ip}/" in cx.output(cid, "ip", "-4", "addr", "show", "eth0")
    assert "eth0" in cx.output(cid, "ls", "/sys/class/net").split()
    # the UTS namespace, owned by the pod's user namespace, got the pod's hostname from the host side
    assert cx.output(cid, "hostname").strip() == (pod[1].hostname or socket.gethostname())

    cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    cx.pods.remove(pod_id)
    assert not pin.exists()
    assert pod_traces(cx.daemon, pod_id) == []


def test_containers_run_in_the_pods_user_namespace(cx: Cx) -> None:
    _run_userns_pod(cx, pid=pb.CONTAINER)


def test_user_namespace_pod_with_a_shared_pid_namespace(cx: Cx) -> None:
    _run_userns_pod(cx, pid=pb.POD)


def test_status_reports_user_namespace_support(cx: Cx) -> None:
    handlers = cx.rt.Status(pb.StatusRequest()).runtime_handlers
    assert handlers and all(h.features.user_namespaces for h in handlers)


def _idmap(container_id: int = 0, host_id: int = 1000, length: int = 100000) -> pb.IDMapping:
    return pb.IDMapping(container_id=container_id, host_id=host_id, length=length)


@pytest.mark.parametrize(
    "userns",
    [
        # the cases critest expects to fail: several mappings, container id 0 unmapped, CONTAINER, TARGET
        pb.UserNamespace(
            mode=pb.POD, uids=[_idmap(), _idmap(host_id=2000)], gids=[_idmap(), _idmap(host_id=2000)]
        ),
        pb.UserNamespace(mode=pb.POD, uids=[_idmap(container_id=1)], gids=[_idmap(container_id=1)]),
        pb.UserNamespace(mode=pb.CONTAINER),
        pb.UserNamespace(mode=pb.TARGET),
        pb.UserNamespace(mode=pb.POD),
        pb.UserNamespace(mode=pb.POD, uids=[_idmap(length=0)], gids=[_idmap(length=0)]),
    ],
)
def test_other_shapes_and_modes_are_invalid_and_leave_nothing(cx: Cx, userns: pb.UserNamespace) -> None:
    options = pb.NamespaceOption(userns_options=userns)
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=options)
    )
    with pytest.raises(grpc.RpcError) as err:
        cx.pod(linux=linux, host_network=False)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert cx.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    pins = cx.daemon.run_root / "ns" / "user"
    assert not pins.exists() or list(pins.iterdir()) == []


def test_privileged_container_in_a_user_namespace_pod_is_refused(cx: Cx) -> None:
    pod = cx.pod(linux=_userns_linux(_host_base()), host_network=False)
    config = _container_config(cx, pod, "priv", ["sleep", "1000"])
    config.linux.security_context.privileged = True
    assert cx.code(cx.create, pod, config) == grpc.StatusCode.INVALID_ARGUMENT
    assert cx.rt.ListContainers(pb.ListContainersRequest()).containers == []


def _pins_and_mounts(run_root: Path) -> list[str]:
    found = [
        str(p) for kind in ("user", "net", "ipc", "uts", "pid") for p in (run_root / "ns" / kind).glob("*")
    ]
    mountinfo = Path("/proc/self/mountinfo").read_text()
    return found + [line for line in mountinfo.splitlines() if str(run_root) in line]


def _processes_in_user_ns(inode: int) -> list[int]:
    """Live processes in the user namespace ``inode``. Zombies are left out: an exited holder that was
    reparented to this machine's init keeps its credentials (and so its user namespace link) until that
    init, not Calyx, reaps it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "ns" / "user").stat().st_ino != inode:
                    continue
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                found.append(int(entry.name))
    return found


def _userns_pod_failing_at(
    builtin_net, failpoint: str
) -> tuple[Daemon, pb.LinuxPodSandboxConfig, grpc.RpcError]:
    """A daemon armed with ``failpoint`` (``<step>=kill|error``), the user-namespace pod config it was
    asked to run, and the error RunPodSandbox ended with."""
    daemon = builtin_net(env={"CALYX_FAILPOINTS": failpoint}).daemon
    linux = _userns_linux(_host_base(), pid=pb.POD)
    with pytest.raises(grpc.RpcError) as err:
        daemon.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(linux=linux)), timeout=60)
    return daemon, linux, err.value


@pytest.mark.parametrize("step", ["pod.after_userns_pin", "pod.after_netns", "pod.after_network"])
def test_kill9_while_making_a_user_namespace_pod_is_cleaned_at_restart(builtin_net, step: str) -> None:
    daemon, linux, err = _userns_pod_failing_at(builtin_net, f"{step}=kill")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert daemon.proc is not None and daemon.proc.wait(30) < 0
    assert f"failpoint={step}" in daemon.log()
    assert _pins_and_mounts(daemon.run_root) != []  # the crash left a half-made pod
    (user_pin,) = (daemon.run_root / "ns" / "user").iterdir()
    inode = user_pin.stat().st_ino
    daemon.env.pop("CALYX_FAILPOINTS", None)
    daemon.start()
    assert daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert _pins_and_mounts(daemon.run_root) == []
    assert _processes_in_user_ns(inode) == []  # neither the holder nor a PID namespace's catatonit
    # kubelet runs the pod again: it works
    pod_id = daemon.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pod_config(linux=linux)), timeout=60
    ).pod_sandbox_id
    assert (daemon.run_root / "ns" / "user" / pod_id).exists()
    daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert _pins_and_mounts(daemon.run_root) == []


def _owner_user_ns(pin: Path) -> int:
    """Inode of the user namespace that owns the namespace pinned at ``pin`` (ioctl NS_GET_USERNS)."""
    fd = os.open(pin, os.O_RDONLY)
    try:
        owner = fcntl.ioctl(fd, NS_GET_USERNS)
        try:
            return os.fstat(owner).st_ino
        finally:
            os.close(owner)
    finally:
        os.close(fd)


def test_user_namespace_pod_on_a_cni_network(cni_net) -> None:
    """The CNI plugins configure a netns owned by the pod's user namespace from the host as usual."""
    net = cni_net()
    daemon = net.daemon
    linux = _userns_linux(_host_base())
    pod_id = daemon.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pod_config(linux=linux)), timeout=120
    ).pod_sandbox_id
    user_pin = daemon.run_root / "ns" / "user" / pod_id
    for kind in ("net", "ipc", "uts"):
        assert _owner_user_ns(daemon.run_root / "ns" / kind / pod_id) == user_pin.stat().st_ino
    ip = daemon.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.network.ip
    assert ip.startswith(net.subnet.rsplit(".", 2)[0])
    assert f"inet {ip}/" in in_netns(str(daemon.run_root / "ns" / "net" / pod_id), "ip", "-4", "addr").stdout
    daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert pod_traces(daemon, pod_id) == []
    assert _pins_and_mounts(daemon.run_root) == []
    assert net.ipam_dir is not None
    assert not net.ipam_dir.exists() or not any(ip in p.name for p in net.ipam_dir.iterdir())


def test_user_namespace_pod_and_container_survive_a_daemon_kill9(cx: Cx) -> None:
    _reachable(cx)
    host = _host_base()
    pod = cx.pod(linux=_userns_linux(host), host_network=False)
    cid = cx.start(cx.create(pod, _container_config(cx, pod, "keep", ["sleep", "1000"])))
    init = json.loads(cx.status(cid, verbose=True).info["info"])["pid"]
    cx.daemon.kill9()
    cx.daemon.start()
    status = cx.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod[0])).status
    assert status.state == pb.SANDBOX_READY  # its user namespace pin counts among the pod's namespaces
    assert cx.status(cid).status.state == pb.CONTAINER_RUNNING
    assert json.loads(cx.status(cid, verbose=True).info["info"])["pid"] == init
    assert cx.output(cid, "cat", "/proc/self/uid_map").split() == ["0", str(host), str(LENGTH)]
    # a second container joins the same user namespace after the restart
    other = cx.start(cx.create(pod, _container_config(cx, pod, "after", ["sleep", "1000"])))
    assert (
        os.stat(f"/proc/{init}/ns/user").st_ino
        == os.stat(f"/proc/{json.loads(cx.status(other, verbose=True).info['info'])['pid']}/ns/user").st_ino
    )


def test_critest_shaped_user_namespace_pod(cx: Cx) -> None:
    """As critest's "runtime should support NamespaceMode_POD": only userns_options set (so pid, ipc and
    network are POD, the enum's zero), the container copies the pod's options and prints its uid_map to
    its log, which must show the one mapping."""
    _reachable(cx)
    host = _host_base()
    mapping = pb.IDMapping(container_id=0, host_id=host, length=100000)
    options = pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.POD, uids=[mapping], gids=[mapping]))
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=options)
    )
    pod = cx.pod(linux=linux, host_network=False)
    cid = cx.start(cx.create(pod, _container_config(cx, pod, "uidmap", ["cat", "/proc/self/uid_map"])))
    assert cx.wait_exit(cid).exit_code == 0
    assert re.search(rf"\s+0\s+{host}\s+100000\n", (cx.logs / "uidmap.log").read_text())


def test_non_root_user_and_readonly_rootfs_in_a_user_namespace(cx: Cx) -> None:
    _reachable(cx)
    host = _host_base()
    pod = cx.pod(linux=_userns_linux(host), host_network=False)
    config = _container_config(cx, pod, "ro", ["sleep", "1000"])
    config.linux.security_context.run_as_user.value = 1000
    config.linux.security_context.readonly_rootfs = True
    cid = cx.start(cx.create(pod, config))
    assert cx.output(cid, "id", "-u").strip() == "1000"
    init = json.loads(cx.status(cid, verbose=True).info["info"])["pid"]
    assert _host_uid(init)[0] == str(host + 1000)
    failed = cx.exec(cid, "sh", "-c", "echo x > /written")
    assert failed.exit_code != 0 and b"Read-only file system" in failed.stderr
    # the pod's files are bound in (mount points made before runc, as the container cannot)
    assert cx.output(cid, "cat", "/etc/hostname").strip() == (pod[1].hostname or socket.gethostname())


def test_tty_container_and_pod_sysctls_in_a_user_namespace(cx: Cx) -> None:
    """runc gives a tty container a console owned by the mapped root; the pod's namespaced sysctls are
    written from the host into namespaces owned by the pod's user namespace."""
    _reachable(cx)
    linux = _userns_linux(_host_base())
    linux.sysctls["net.ipv4.ping_group_range"] = "0 0"
    linux.sysctls["kernel.shm_rmid_forced"] = "1"
    pod = cx.pod(linux=linux, host_network=False)
    config = _container_config(cx, pod, "tty", ["sh", "-c", "tty > /tmp/tty; exec sleep 1000"])
    config.tty = True
    cid = cx.start(cx.create(pod, config))
    assert cx.output(cid, "cat", "/proc/sys/net/ipv4/ping_group_range").split() == ["0", "0"]
    assert cx.output(cid, "cat", "/proc/sys/kernel/shm_rmid_forced").strip() == "1"
    tty = ""
    for _ in range(100):
        tty = cx.exec(cid, "cat", "/tmp/tty").stdout.decode().strip()
        if tty:
            break
    assert tty.startswith("/dev/pts/") or tty == "/dev/console"


def test_port_forward_and_streaming_exec_into_a_user_namespace_pod(cx: Cx) -> None:
    """PortForward dials from the daemon inside the netns owned by the pod's user namespace; an exec
    over the streaming server lands in the container's user namespace."""
    _reachable(cx)
    host = _host_base()
    pod = cx.pod(linux=_userns_linux(host), host_network=False)
    web = ["sh", "-c", "mkdir /srv && echo hello-userns > /srv/index.html && exec httpd -f -p 80 -h /srv"]
    cid = cx.start(cx.create(pod, _container_config(cx, pod, "web", web)))

    def fetch() -> bytes:
        return portforward_get(
            cx.rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod[0], port=[80])).url, 80
        )

    replies: list[bytes] = []
    wait_for(lambda: replies.append(fetch()) or replies[-1].endswith(b"hello-userns\n"), "httpd answers")
    # the pod's network statistics are read from its netns too
    stats = cx.rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod[0])).stats
    assert stats.linux.network.default_interface.name == "eth0"
    assert stats.linux.network.default_interface.rx_bytes.value > 0

    url = cx.rt.Exec(pb.ExecRequest(container_id=cid, cmd=["cat", "/proc/self/uid_map"], stdout=True)).url
    client, s = spdy(url, ("stdout", "error"))
    out = s["stdout"].read_all()
    s["error"].read_all()
    client.close()
    assert out.split() == [b"0", str(host).encode(), str(LENGTH).encode()]


def test_kill9_while_stopping_a_user_namespace_pod_is_finished_at_restart(builtin_net) -> None:
    net = builtin_net(env={"CALYX_FAILPOINTS": "pod.stop_after_network=kill"})
    daemon = net.daemon
    linux = _userns_linux(_host_base(), pid=pb.POD)
    pod_id = daemon.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pod_config(linux=linux)), timeout=60
    ).pod_sandbox_id
    info = json.loads(
        daemon.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)).info[
            "info"
        ]
    )
    assert info["namespaces"]["user"] == str(daemon.run_root / "ns" / "user" / pod_id)
    inode = (daemon.run_root / "ns" / "user" / pod_id).stat().st_ino
    with pytest.raises(grpc.RpcError):
        daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert daemon.proc is not None and daemon.proc.wait(30) < 0
    assert _pins_and_mounts(daemon.run_root) != []
    daemon.env.pop("CALYX_FAILPOINTS", None)
    daemon.start()
    status = daemon.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == pb.SANDBOX_NOTREADY
    assert _pins_and_mounts(daemon.run_root) == []
    assert _processes_in_user_ns(inode) == []
    daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


@pytest.mark.parametrize("step", ["pod.after_userns_pin", "pod.after_netns"])
def test_a_failure_while_making_a_user_namespace_pod_leaves_nothing(builtin_net, step: str) -> None:
    daemon, _linux, err = _userns_pod_failing_at(builtin_net, f"{step}=error")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert f"failpoint={step}" in daemon.log()
    assert daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert _pins_and_mounts(daemon.run_root) == []


def test_a_working_dir_made_by_calyx_belongs_to_the_containers_root(cx: Cx) -> None:
    _reachable(cx)
    pod = cx.pod(linux=_userns_linux(_host_base()), host_network=False)
    config = _container_config(cx, pod, "wd", ["sleep", "1000"])
    config.working_dir = "/work/dir"
    cid = cx.start(cx.create(pod, config))
    assert cx.output(cid, "pwd").strip() == "/work/dir"
    assert cx.output(cid, "stat", "-c", "%u:%g", "/work", "/work/dir").split() == ["0:0", "0:0"]
    assert cx.output(cid, "sh", "-c", "touch x && echo ok") == "ok\n"


def test_mode_node_keeps_the_hosts_user_namespace(cx: Cx) -> None:
    """critest's "runtime should support NamespaceMode_NODE": kubelet sends NODE for every pod when the
    feature is on, repeated on each container; the container's uid_map is the host's."""
    options = pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.NODE))
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=options)
    )
    pod = cx.pod(linux=linux, host_network=False)
    assert not (cx.daemon.run_root / "ns" / "user" / pod[0]).exists()
    cid = cx.start(cx.create(pod, _container_config(cx, pod, "node", ["sleep", "1000"])))
    host_map = Path("/proc/self/uid_map").read_text().split()
    assert cx.output(cid, "cat", "/proc/self/uid_map").split() == host_map
