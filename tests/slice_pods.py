"""A calyx daemon inside the test systemd (tests/systemd_fixture.py) with one pod in a kubelet-style
pod slice: the setup the systemd-driver tests of cgroups and of stats share, written once."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cri.api import api_pb2 as pb
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import host_network_linux, pod_config, run_pod, stop_remove
from tests.systemd_fixture import NamespacedSystemd, SystemdDaemon, pull_from_the_host


def pod_slice(qos: str = "besteffort") -> tuple[str, str]:
    """A new pod slice as kubelet names it: the cgroup parent and the slice's cgroup path."""
    uid = secrets.token_hex(6)
    return f"kubepods-{qos}-pod{uid}.slice", (
        f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice"
    )


@dataclass
class SlicePod:
    daemon: SystemdDaemon
    image: str  # busybox, pulled
    parent: str  # the pod's cgroup parent (the slice's name)
    path: str  # the slice's cgroup path
    config: pb.PodSandboxConfig = field(default_factory=pb.PodSandboxConfig)
    id: str = ""

    def start_container(
        self, name: str, command: list[str], resources: pb.LinuxContainerResources, pid_mode: int
    ) -> str:
        """Create and start a busybox container with these limits and PID namespace mode; its id."""
        rt = self.daemon.runtime
        cid: str = rt.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=self.id,
                sandbox_config=self.config,
                config=pb.ContainerConfig(
                    metadata=pb.ContainerMetadata(name=name),
                    image=pb.ImageSpec(image=self.image),
                    command=command,
                    log_path=f"{name}.log",
                    linux=pb.LinuxContainerConfig(
                        resources=resources,
                        security_context=pb.LinuxContainerSecurityContext(
                            namespace_options=pb.NamespaceOption(pid=pid_mode)
                        ),
                    ),
                ),
            ),
            timeout=120,
        ).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
        return cid

    def remove(self) -> None:
        """Stop and remove the pod (and so its containers), as part of the test: errors fail it."""
        stop_remove(self.daemon, self.id)
        self.id = ""


@contextlib.contextmanager
def pod_in_a_slice(
    systemd: NamespacedSystemd,
    registry: LoopbackRegistry,
    base: Path,
    cgroup: dict[str, Any] | None = None,
    qos: str = "besteffort",
    parent_as_path: bool = False,
) -> Iterator[SlicePod]:
    """A daemon with the systemd cgroup driver (and ``cgroup`` options) running a host-network pod in a
    new pod slice; at the end the pod (unless the test removed it) and the daemon go. ``parent_as_path``:
    the pod names its slice by the slice's path (``/kubepods.slice/.../<slice>``, as critest does)."""
    config: dict[str, Any] = {"images": {"registries": {registry.host: {"insecure": True}}}}
    ref = registry.ref("calyx-test/busybox:latest")
    pull_from_the_host(base, config, ref)
    daemon = SystemdDaemon(
        systemd, base, {**config, "cgroup": {"driver": "systemd", **(cgroup or {})}}
    ).start()
    parent, path = pod_slice(qos)
    logs = base / "podlogs"
    logs.mkdir()
    pod = SlicePod(daemon, ref, parent, path)
    try:
        linux = host_network_linux()
        linux.cgroup_parent = path if parent_as_path else parent
        pod.config = pod_config(log_directory=str(logs), linux=linux)
        pod.id = run_pod(daemon, pod.config)
        yield pod
    finally:
        if pod.id:
            with contextlib.suppress(grpc.RpcError):
                stop_remove(daemon, pod.id)
        daemon.stop()
