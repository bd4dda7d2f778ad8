"""Fixtures and helpers for container tests through the CRI API (import into a conftest or module).

``cx``: a daemon on the built-in network that pulls from the loopback test registry, with helpers to
run pods (host network by default, each in a cgroup parent of its own) and containers in them. At
teardown every pod (and with it every container) is stopped and removed, and the test's cgroup parents
must be gone from every hierarchy.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import cgroup_files
from tests.daemon import Daemon
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import Net, builtin_net, host_network_linux, pod_config, run_pod  # noqa: F401

CGROUP_ROOT = Path("/sys/fs/cgroup")


def process_runs(pid: int, program: str) -> bool:
    """``pid`` exists and runs ``program`` (a recycled PID running something else does not count)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(program.encode())
    except OSError:
        return False


def processes_with(argument: str) -> list[int]:
    """Host PIDs with ``argument`` as one of their command-line arguments (every PID for "")."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if not argument or argument.encode() in cmdline.split(b"\0"):
            found.append(int(entry.name))
    return found


def wait_running(argument: str, timeout: float = 60.0) -> list[int]:
    """Wait until some process has ``argument`` (see processes_with); fails the test at the timeout."""
    deadline = time.monotonic() + timeout
    while not (found := processes_with(argument)):
        assert time.monotonic() < deadline, f"no process with {argument!r} ran within {timeout:g}s"
        time.sleep(0.05)
    return found


def wait_gone(argument: str, timeout: float = 60.0) -> list[int]:
    """Wait until no process has ``argument`` (see processes_with); what is left at the timeout."""
    deadline = time.monotonic() + timeout
    while (left := processes_with(argument)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def cgroup_dirs_named(name: str) -> list[Path]:
    """The dirs of cgroup ``name`` in every hierarchy (v1) or the one (v2)."""
    return cgroup_files.dirs(name)


class Cx:
    def __init__(self, net: Net, registry: LoopbackRegistry, logs: Path) -> None:
        self.net = net
        self.daemon: Daemon = net.daemon
        self.registry = registry
        self.logs = logs
        self.parents: list[str] = []
        self.pods: list[str] = []

    @property
    def rt(self) -> Any:
        return self.daemon.runtime

    def image(self, name: str = "calyx-test/busybox:latest") -> str:
        ref = self.registry.ref(name)
        self.daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=120)
        return ref

    def pod(
        self, linux: pb.LinuxPodSandboxConfig | None = None, host_network: bool = True
    ) -> tuple[str, Any]:
        parent = f"/cxc-{secrets.token_hex(4)}"
        self.parents.append(parent)
        if linux is None:
            linux = host_network_linux() if host_network else pb.LinuxPodSandboxConfig()
        linux = pb.LinuxPodSandboxConfig().__class__.FromString(linux.SerializeToString())
        linux.cgroup_parent = parent
        config = pod_config(log_directory=str(self.logs), linux=linux)
        pod_id = run_pod(self.daemon, config)
        self.pods.append(pod_id)
        return pod_id, config

    def config(
        self, name: str, command: list[str], image: str | None = None, **kw: Any
    ) -> pb.ContainerConfig:
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=image or self.image()),
            command=command,
            log_path=f"{name}.log",
            **kw,
        )

    def create(self, pod: tuple[str, Any], config: pb.ContainerConfig) -> str:
        return str(
            self.rt.CreateContainer(
                pb.CreateContainerRequest(pod_sandbox_id=pod[0], config=config, sandbox_config=pod[1]),
                timeout=120,
            ).container_id
        )

    def start(self, cid: str) -> str:
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
        return cid

    def run(self, pod: tuple[str, Any], name: str, command: list[str], **kw: Any) -> str:
        return self.start(self.create(pod, self.config(name, command, **kw)))

    def status(self, cid: str, verbose: bool = False) -> pb.ContainerStatusResponse:
        return self.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=verbose))

    def wait_exit(self, cid: str, timeout: float = 60.0) -> pb.ContainerStatus:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(cid).status
            if st.state == pb.CONTAINER_EXITED:
                return st
            assert time.monotonic() < deadline, f"container {cid} did not exit"
            time.sleep(0.05)

    def exec(self, cid: str, *cmd: str, timeout: int = 30) -> pb.ExecSyncResponse:
        return self.rt.ExecSync(
            pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout), timeout=120
        )

    def output(self, cid: str, *cmd: str) -> str:
        result = self.exec(cid, *cmd)
        assert result.exit_code == 0, (cmd, result.stderr)
        return result.stdout.decode()

    def stop(self, cid: str, timeout: int = 0) -> None:
        self.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=timeout), timeout=120)

    def remove(self, cid: str) -> None:
        self.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=120)

    def code(self, call: Callable[..., Any], *args: Any, **kw: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as err:
            call(*args, **kw)
        return err.value.code()

    def cleanup(self) -> None:
        for pod_id in self.pods:
            try:
                self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
                self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
            except grpc.RpcError:
                pass
        leftovers = []
        for parent in self.parents:
            for d in sorted(cgroup_dirs_named(parent), key=lambda p: -len(p.parts)):
                for sub in sorted(d.rglob("*"), key=lambda p: -len(p.parts)):
                    if sub.is_dir():
                        leftovers.append(sub)
                        sub.rmdir()
                leftovers.append(d)
                d.rmdir()
        # removing the pods must have removed their cgroups (pod parent, containers, monitors)
        assert leftovers == [], f"cgroups left behind: {leftovers}"


@pytest.fixture
def cx(builtin_net: Callable[..., Net], image_registry: LoopbackRegistry, short_tmp: Path) -> Iterator[Cx]:  # noqa: F811
    registries = {image_registry.host: {"insecure": True}}
    net = builtin_net(config={"images": {"registries": registries}})
    logs = short_tmp / "podlogs"
    logs.mkdir()
    helper = Cx(net, image_registry, logs)
    try:
        yield helper
    finally:
        helper.cleanup()
