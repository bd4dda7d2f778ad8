"""The CRI fuzz's generators and safety net (tests/fuzz/), without a daemon: every RPC can be generated,
and nothing the net lets through reaches the host outside what the run owns."""

from __future__ import annotations

import ipaddress
import posixpath
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calyx_base.errors import CalyxError
from cri.api import api_pb2 as pb
from cri.images import reference
from tests.fuzz import requests as rq
from tests.fuzz.safety import Net
from tests.fuzz.values import LOOP, harmless
from tests.fuzz.world import DEVICES, World, make_scratch

FAST = settings(max_examples=40, database=None, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    scratch = tmp_path_factory.mktemp("fuzz") / "scratch"
    make_scratch(scratch)
    return World(
        scratch, "/cxfz-unit", 7, [40001, 40002], "127.0.0.1:5000", pods=["a" * 64], containers=["b" * 64]
    )


def _messages(m: Message) -> Iterator[Message]:
    yield m
    for field, value in m.ListFields():
        if field.type == field.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            for item in value if field.is_repeated else [value]:
                yield from _messages(item)


def _inside(path: str, root: Path) -> bool:
    return not path.startswith("/") or "\x00" in path or Path(path).resolve().is_relative_to(root)


def assert_safe(request: Message, world: World) -> None:
    v4, v6 = (ipaddress.ip_network(c) for c in world.claimed())
    for m in _messages(request):
        name = m.DESCRIPTOR.name
        if name == "ContainerConfig":
            assert harmless([*m.command, *m.args] if m.command else list(m.args))
            assert _inside(m.log_path, world.scratch)
        elif name in ("ExecSyncRequest", "ExecRequest"):
            assert harmless(list(m.cmd))
            if name == "ExecSyncRequest" and list(m.cmd) == LOOP:
                assert m.timeout > 0, "an ExecSync of the endless loop without a timeout never returns"
        elif name == "Mount":
            assert _inside(m.host_path, world.scratch)
        elif name == "Device":
            assert m.host_path in DEVICES or _inside(m.host_path, world.scratch)
        elif name == "PodSandboxConfig":
            assert _inside(m.log_directory, world.scratch)
        elif name == "LinuxPodSandboxConfig" and m.cgroup_parent.startswith("/"):
            # A cgroup path, not a file of this host: normalised as text (a NUL in it is the daemon's
            # to refuse; resolve() against the host's root would raise on it).
            parts = PurePosixPath(posixpath.normpath(m.cgroup_parent)).parts
            prefix = PurePosixPath(world.cgroup_prefix).parts
            assert parts[: len(prefix)] == prefix
        elif name == "PortMapping" and 0 < m.host_port <= 65535:
            assert m.host_port in world.ports
        elif name == "NetworkConfig":
            for part in m.pod_cidr.split(","):
                try:
                    network = ipaddress.ip_network(part.strip(), strict=False)
                except ValueError:
                    continue
                assert network.subnet_of(v4) if network.version == 4 else network.subnet_of(v6)  # type: ignore[arg-type]
        elif name == "PullImageRequest":
            try:
                domain = reference.parse(m.image.image).domain
            except CalyxError:
                continue
            assert domain in (world.registry, "127.0.0.1:1", "[::1]:1")


@pytest.mark.parametrize("method", sorted(rq.METHODS))
def test_every_rpc_is_generated_and_made_safe(method: str, world: World) -> None:
    net = Net(world)

    @FAST
    @given(rq.plan(rq.METHODS[method].input_type))
    def check(tree: dict) -> None:  # type: ignore[type-arg]
        request = net.make_safe(rq.build(rq.METHODS[method].input_type, tree, world))
        assert_safe(request, world)

    check()


@FAST
@given(data=st.data())
def test_friendly_requests_are_made_safe(data: st.DataObject, world: World) -> None:
    net = Net(world)
    pod = net.make_safe(rq.build(pb.PodSandboxConfig.DESCRIPTOR, data.draw(rq.friendly_pod()), world))
    ctr = net.make_safe(rq.build(pb.ContainerConfig.DESCRIPTOR, data.draw(rq.friendly_container()), world))
    assert_safe(pod, world)
    assert_safe(ctr, world)


def test_the_net_rewrites_what_would_reach_the_host(world: World) -> None:
    """Each of these, sent as it is, would touch the host: the net must change every one."""
    escape = world.scratch / "out"
    escape.symlink_to("/etc")
    try:
        cases: list[Message] = [
            pb.ExecSyncRequest(cmd=["reboot", "-f"]),
            pb.ExecSyncRequest(cmd=["sh", "-c", "rm -rf /"]),
            pb.ExecSyncRequest(cmd=LOOP, timeout=0),
            pb.ExecSyncRequest(cmd=LOOP, timeout=-1),
            pb.ContainerConfig(args=["reboot"]),
            pb.ContainerConfig(command=["cat"], args=["/dev/zero"]),
            pb.Mount(host_path="/etc"),
            pb.Mount(host_path=f"{world.scratch}/../../etc"),
            pb.Mount(host_path=str(escape / "shadow")),
            pb.Device(host_path="/dev/sda"),
            pb.PodSandboxConfig(log_directory="/var/log"),
            pb.LinuxPodSandboxConfig(cgroup_parent="/system.slice"),
            pb.LinuxPodSandboxConfig(cgroup_parent=f"{world.cgroup_prefix}/../.."),
            pb.LinuxPodSandboxConfig(cgroup_parent=f"{world.cgroup_prefix}x"),
            pb.LinuxPodSandboxConfig(cgroup_parent="/\x00"),
            pb.NetworkConfig(pod_cidr="0.0.0.0/0"),
            pb.NetworkConfig(pod_cidr=f"10.250.{world.net}.0/24,192.168.0.0/16"),
            pb.PortMapping(host_port=22),
            pb.PullImageRequest(image=pb.ImageSpec(image="busybox")),
            pb.PullImageRequest(image=pb.ImageSpec(image="example.com/x:1")),
            pb.PullImageRequest(image=pb.ImageSpec(image=f"{world.registry}/calyx-test/web:latest")),
            pb.SecurityProfile(localhost_ref="/etc/shadow"),
        ]
        for message in cases:
            net = Net(world)
            before = message.SerializeToString()
            net.make_safe(message)
            assert message.SerializeToString() != before, message
            assert sum(net.rewrites.values()) == 1
            assert_safe(message, world)
    finally:
        escape.unlink()


def test_the_net_leaves_safe_requests_alone(world: World) -> None:
    for message in [
        pb.ExecSyncRequest(cmd=["echo", "hi", "/etc/shadow"]),
        pb.ContainerConfig(command=["sh", "-c", "exit 3"], args=["x"], log_path="c.log"),
        pb.Mount(host_path=str(world.scratch / "vol"), container_path="/etc"),
        pb.Mount(host_path="relative/../../etc"),
        pb.LinuxPodSandboxConfig(cgroup_parent=f"{world.cgroup_prefix}/a/b"),
        pb.LinuxPodSandboxConfig(cgroup_parent=f"{world.cgroup_prefix}/\x00"),  # the daemon's to refuse
        pb.NetworkConfig(pod_cidr=f"10.250.{world.net}.128/25,fd42:f2:{world.net}::/64"),
        pb.PullImageRequest(image=pb.ImageSpec(image=f"{world.registry}/calyx-test/busybox:latest")),
    ]:
        net = Net(world)
        net.make_safe(message)
        assert not net.rewrites, message
        assert_safe(message, world)
