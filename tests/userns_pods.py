"""Pods with a user namespace of their own for end-to-end tests: a host id range per test, the pod and
container configs kubelet sends for them, and the idmapped staging mounts a daemon has made."""

from __future__ import annotations

import secrets
from pathlib import Path

from cri.api import api_pb2 as pb
from tests.container_fixtures import Cx

LENGTH = 65536
NOBODY = "65534:65534"


def host_base() -> int:
    """A host id range of our own, so that concurrent tests never share one."""
    return 100000 + LENGTH * (1 + secrets.randbelow(30000))


def ns_options(host: int) -> pb.NamespaceOption:
    mapping = pb.IDMapping(container_id=0, host_id=host, length=LENGTH)
    userns = pb.UserNamespace(mode=pb.POD, uids=[mapping], gids=[mapping])
    return pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD, userns_options=userns)


def userns_pod(cx: Cx, host: int) -> tuple[str, pb.PodSandboxConfig]:
    # The container's root (an unprivileged host uid) must pass through the test's 0700 temp dir to
    # reach the daemon's state dirs.
    base = cx.daemon.root.parent.parent
    base.chmod(base.stat().st_mode | 0o001)
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns_options(host))
    )
    return cx.pod(linux=linux, host_network=False)


def in_pod_userns(config: pb.ContainerConfig, pod: tuple[str, pb.PodSandboxConfig]) -> pb.ContainerConfig:
    """kubelet repeats the pod's namespace options on each container of the pod."""
    config.linux.security_context.namespace_options.CopyFrom(pod[1].linux.security_context.namespace_options)
    return config


def staging_mounts(cx: Cx) -> list[str]:
    """This daemon's idmapped staging mounts, as the kernel lists them."""
    root = str(cx.daemon.root / "containers")
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if root in line and "/idmapped/" in line]
