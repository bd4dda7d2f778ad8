"""Hostile CRI requests: a field that would be interpreted (split into CNI_ARGS, climb out of a dir, add
a line to resolv.conf or an iptables rule, cut an execve string, block the worker on a fifo) is refused
with INVALID_ARGUMENT, and nothing of the request is left: no pod, pin, pod dir, iptables rule or
cgroup; no container, container dir, mount or cgroup.

Each table runs on one daemon (a daemon per case would cost a start each); the assertion lists every
case that was not refused cleanly, with what it left."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx, cgroup_dirs_named
from tests.image_fixtures import image_registry, registry_base  # noqa: F401
from tests.net_fixtures import Net, ip6tables_save, iptables_save, pod_config, stop_remove

cx = container_fixtures.cx

PROFILE = '{"defaultAction": "SCMP_ACT_ALLOW"}'


def _refused(call: Callable[[], Any]) -> str:
    """ "" when ``call`` fails with INVALID_ARGUMENT, else what happened."""
    try:
        call()
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return ""
        return f"{err.code().name}: {err.details()}"
    return "accepted"


# --- RunPodSandbox -------------------------------------------------------------------------------------


def _port(config: pb.PodSandboxConfig, host_ip: str, host_port: int) -> None:
    config.port_mappings.append(pb.PortMapping(container_port=80, host_port=host_port, host_ip=host_ip))


POD_CASES: list[tuple[str, Callable[[pb.PodSandboxConfig, int], None]]] = [
    # CNI_ARGS is "IgnoreUnknown=1;K8S_POD_NAMESPACE=...;K8S_POD_NAME=...;..."
    ("name with ';' and '='", lambda c, _: setattr(c.metadata, "name", "web;K8S_POD_NAMESPACE=kube-system")),
    ("namespace with '='", lambda c, _: setattr(c.metadata, "namespace", "ns=x")),
    ("uid with a space", lambda c, _: setattr(c.metadata, "uid", "u u")),
    ("uid with a newline", lambda c, _: setattr(c.metadata, "uid", "uid\n")),
    ("relative log_directory", lambda c, _: setattr(c, "log_directory", "var/log/pods/x")),
    ("log_directory with '..'", lambda c, _: setattr(c, "log_directory", "/var/log/pods/../../../etc")),
    ("log_directory with NUL", lambda c, _: setattr(c, "log_directory", "/tmp/logs\0x")),
    ("host_ip with an IPv6 zone", lambda c, p: _port(c, "fe80::1%eth0", p)),
    ("host_ip zone with a rule", lambda c, p: _port(c, "fe80::1%x\n-A INPUT -j ACCEPT", p)),
    ("host_ip with a space", lambda c, p: _port(c, "127.0.0.1 -j ACCEPT", p)),
    (
        "DNS server zone with a line",
        lambda c, _: c.dns_config.servers.append("fe80::1%x\nnameserver 6.6.6.6"),
    ),
    ("DNS search with NUL", lambda c, _: c.dns_config.searches.append("svc\0x")),
    ("DNS option with a newline", lambda c, _: c.dns_config.options.append("ndots:1\nnameserver 6.6.6.6")),
]


def _pod_leftovers(net: Net, parent: str, host_port: int) -> list[str]:
    daemon = net.daemon
    left = [f"pod {p.id}" for p in daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items]
    left += [f"pin {p}" for p in (daemon.run_root / "ns").glob("*/*")]
    left += [f"pod dir {p}" for p in (daemon.root / "pods").glob("*")]
    left += [f"cgroup {d}" for d in cgroup_dirs_named(parent)]
    rules = iptables_save() + ip6tables_save()
    left += [f"rule {line}" for line in rules.splitlines() if f"--dport {host_port} " in line]
    return left


def test_hostile_pod_fields_are_invalid_argument_and_leave_nothing(builtin_net, short_tmp: Path) -> None:
    net = builtin_net()
    failures = []
    for n, (label, spoil) in enumerate(POD_CASES):
        parent = f"/cxbad-{secrets.token_hex(4)}"
        host_port = 40000 + (os.getpid() * 31 + n) % 20000
        config = pod_config(log_directory=str(short_tmp / "logs"), linux=pb.LinuxPodSandboxConfig())
        config.linux.cgroup_parent = parent
        _port(config, "", host_port)
        spoil(config, host_port)
        outcome = _refused(
            lambda c=config: net.daemon.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=c), timeout=60)
        )
        left = _pod_leftovers(net, parent, host_port)
        if outcome or left:
            failures.append(f"{label}: {outcome or 'refused'}; left {left}")
        for pod in net.daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
            stop_remove(net.daemon, pod.id)
    assert failures == [], "\n".join(failures)


def test_a_clean_pod_like_kubelets_still_runs(builtin_net, short_tmp: Path) -> None:
    """The checks let through what kubelet and critest send (upper case, '_' and '.' in names)."""
    net = builtin_net()
    config = pod_config(
        name="PodSandbox-for_test.1", log_directory=str(short_tmp / "logs" / "ns_pod_uid") + "/"
    )
    config.metadata.uid = "0b3e1f8c-6a7d-4a83-9c1e-2f1a8e3b9d10"
    config.dns_config.servers.extend(["10.96.0.10", "fd00::a"])
    _port(config, "::", 40000 + os.getpid() % 20000)
    pod_id = net.daemon.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=config), timeout=60
    ).pod_sandbox_id
    assert (short_tmp / "logs" / "ns_pod_uid").is_dir()
    stop_remove(net.daemon, pod_id)


# --- CreateContainer -----------------------------------------------------------------------------------


def _seccomp(ref: str) -> Callable[[pb.ContainerConfig], None]:
    def spoil(config: pb.ContainerConfig) -> None:
        profile = pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=ref)
        config.linux.security_context.seccomp.CopyFrom(profile)

    return spoil


def _profiles(base: Path) -> dict[str, Path]:
    """Localhost profiles that are no regular file of a sane size (and a fine one behind a symlink)."""
    made = {"fifo": base / "fifo.json", "dir": base / "dir.json", "big": base / "big.json"}
    os.mkfifo(made["fifo"])
    made["dir"].mkdir()
    made["big"].write_text(" " * (2 << 20) + PROFILE)  # valid JSON, 2 MiB
    (base / "fine.json").write_text(PROFILE)
    made["symlink"] = base / "link.json"
    made["symlink"].symlink_to(base / "fine.json")
    return made


def _container_cases(base: Path) -> list[tuple[str, Callable[[pb.ContainerConfig], None]]]:
    profiles = _profiles(base)
    return [
        ("container name with ';'", lambda c: setattr(c.metadata, "name", "c;x")),
        # the pod's log dir is <base>/podlogs: both would write <base>/evil.log
        ("absolute log_path", lambda c: setattr(c, "log_path", str(base / "evil.log"))),
        ("log_path climbing out", lambda c: setattr(c, "log_path", "../evil.log")),
        ("log_path not clean", lambda c: setattr(c, "log_path", "./c//0.log")),
        ("log_path with NUL", lambda c: setattr(c, "log_path", "c\0.log")),
        ("env name with '='", lambda c: c.envs.append(pb.KeyValue(key="A=B", value=b"x"))),
        ("env value with NUL", lambda c: c.envs.append(pb.KeyValue(key="A", value=b"x\0y"))),
        ("command with NUL", lambda c: c.command.append("a\0b")),
        (
            "mount host_path with NUL",
            lambda c: c.mounts.append(pb.Mount(container_path="/m", host_path="/tmp\0x")),
        ),
        (
            "relative mount container_path",
            lambda c: c.mounts.append(pb.Mount(container_path="m", host_path="/tmp")),
        ),
        (
            "device permissions",
            lambda c: c.devices.append(
                pb.Device(container_path="/dev/n", host_path="/dev/null", permissions="rwx")
            ),
        ),
        ("masked path relative", lambda c: c.linux.security_context.masked_paths.append("proc/kcore")),
        (
            "systemd property annotation",
            lambda c: c.annotations.update({"org.systemd.property.DeviceAllow": "x"}),
        ),
        ("crun annotation", lambda c: c.annotations.update({"run.oci.keep_original_groups": "1"})),
        ("seccomp profile: a fifo", _seccomp(str(profiles["fifo"]))),
        ("seccomp profile: a directory", _seccomp(str(profiles["dir"]))),
        ("seccomp profile: 2 MiB", _seccomp(str(profiles["big"]))),
        ("seccomp profile: a symlink", _seccomp(str(profiles["symlink"]))),
        ("seccomp profile: /dev/zero", _seccomp("/dev/zero")),
        ("seccomp profile: a /proc file", _seccomp("/proc/self/status")),
        ("seccomp profile: relative", _seccomp("fine.json")),
    ]


def _container_leftovers(cx: Cx, pod_id: str) -> list[str]:
    daemon = cx.daemon
    request = pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod_id))
    left = [f"container {c.id}" for c in daemon.runtime.ListContainers(request).containers]
    left += [f"container dir {p}" for p in (daemon.root / "containers").iterdir()]
    containers = str(daemon.root / "containers")
    left += [
        f"mount {line}"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if containers in line
    ]
    left += [f"cgroup {c}" for d in cgroup_dirs_named(cx.parents[-1]) for c in d.glob("calyx-*")]
    evil = cx.logs.parent / "evil.log"  # what an escaping log_path would have made
    left += [f"file {evil}"] if evil.exists() else []
    return left


def test_hostile_container_fields_are_invalid_argument_and_leave_nothing(cx: Cx, short_tmp: Path) -> None:
    pod = cx.pod()
    image = cx.image()
    failures = []
    for label, spoil in _container_cases(short_tmp):
        config = cx.config("c", ["sleep", "1000"], image=image)
        spoil(config)
        outcome = _refused(lambda c=config: cx.create(pod, c))
        left = _container_leftovers(cx, pod[0])
        if outcome or left:
            failures.append(f"{label}: {outcome or 'refused'}; left {left}")
        (short_tmp / "evil.log").unlink(missing_ok=True)
        for c in cx.rt.ListContainers(pb.ListContainersRequest()).containers:
            with contextlib.suppress(grpc.RpcError):
                cx.remove(c.id)
    assert failures == [], "\n".join(failures)
    # the fine profile, named by its own path, is taken
    cid = cx.create(pod, cx.config("fine", ["sleep", "1000"], image=image))
    assert cid
    config = cx.config("seccomp", ["true"], image=image)
    _seccomp(str(short_tmp / "fine.json"))(config)
    assert cx.create(pod, config)


def test_exec_commands_with_nul_are_invalid_argument(cx: Cx) -> None:
    cid = cx.run(cx.pod(), "sleeper", ["sleep", "1000"])
    assert cx.code(cx.exec, cid, "echo", "a\0b") == grpc.StatusCode.INVALID_ARGUMENT
    request = pb.ExecRequest(container_id=cid, cmd=["echo", "a\0b"], stdout=True)
    assert cx.code(cx.rt.Exec, request) == grpc.StatusCode.INVALID_ARGUMENT
    assert cx.output(cid, "echo", "still", "fine") == "still fine\n"
