"""A CRI client for benchmarks: the generated stubs plus the pod and container configs we start.

Every call goes through ``call`` so that an endpoint answering UNIMPLEMENTED turns into a ``Skip``
naming the RPC: the harness then reports 'n/a' for that benchmark instead of failing the run.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench.stats import Skip
from cri.api import api_pb2 as pb
from cri.api import api_pb2_grpc as pb_grpc

# The container every benchmark starts; the argv is unique so the memory benchmark can tell the
# workload from the runtime's own helpers (a pause image also runs busybox sleep).
WORKLOAD = ["sleep", "86400"]


class RPCError(RuntimeError):
    """An RPC failed for another reason than UNIMPLEMENTED."""


class Client:
    def __init__(self, endpoint: str, timeout: float = 120.0) -> None:
        target = endpoint if not endpoint.startswith("unix:///") else "unix:" + endpoint[len("unix://") :]
        self.endpoint = endpoint
        self.channel = grpc.insecure_channel(
            target,
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)
        self.images = pb_grpc.ImageServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def call(self, service: str, rpc: str, request: Any, timeout: float | None = None) -> Any:
        stub = self.runtime if service == "runtime" else self.images
        method: Callable[..., Any] = getattr(stub, rpc)
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise Skip(f"n/a: {rpc} unimplemented") from None
            raise RPCError(f"{rpc}: {code.name}: {exc.details()}") from None  # type: ignore[attr-defined]

    def rt(self, rpc: str, request: Any, timeout: float | None = None) -> Any:
        return self.call("runtime", rpc, request, timeout)

    def img(self, rpc: str, request: Any, timeout: float | None = None) -> Any:
        return self.call("images", rpc, request, timeout)

    def wait_ready(self, timeout: float = 60.0) -> pb.VersionResponse:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                status = self.runtime.Status(pb.StatusRequest(), timeout=2)
                if any(c.type == "RuntimeReady" and c.status for c in status.status.conditions):
                    return self.runtime.Version(pb.VersionRequest(), timeout=2)
                last = str(status.status)
            except grpc.RpcError as exc:
                last = str(exc.details())  # type: ignore[attr-defined]
            time.sleep(0.1)
        raise RPCError(f"{self.endpoint} not ready after {timeout}s: {last}")


class Workload:
    """Builds the pod and container configs every runtime gets, and tears down what it started."""

    def __init__(self, client: Client, image: str, log_root: Path, cgroup_root: str) -> None:
        self.client = client
        self.image = image
        self.log_root = log_root
        self.cgroup_root = cgroup_root
        self.pods: dict[str, pb.PodSandboxConfig] = {}

    def pod_config(self, shared_pid: bool = False) -> pb.PodSandboxConfig:
        uid = secrets.token_hex(8)
        log_dir = self.log_root / uid
        log_dir.mkdir(parents=True, exist_ok=True)
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=f"bench-{uid}", uid=uid, namespace="bench", attempt=0),
            hostname=f"bench-{uid[:8]}",
            log_directory=str(log_dir),
            labels={"calyx.bench": "1"},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"{self.cgroup_root}/pod{uid}",
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(
                        network=pb.NamespaceMode.POD,
                        pid=pb.NamespaceMode.POD if shared_pid else pb.NamespaceMode.CONTAINER,
                        ipc=pb.NamespaceMode.POD,
                    )
                ),
            ),
        )

    def container_config(self, n: int = 0) -> pb.ContainerConfig:
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=f"c{n}", attempt=0),
            image=pb.ImageSpec(image=self.image),
            command=WORKLOAD[:1],
            args=WORKLOAD[1:],
            log_path=f"c{n}.log",
            labels={"calyx.bench": "1"},
        )

    def run_pod(self, shared_pid: bool = False) -> str:
        config = self.pod_config(shared_pid)
        pod_id = self.client.rt("RunPodSandbox", pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
        self.pods[pod_id] = config
        return str(pod_id)

    def start_container(self, pod_id: str, n: int = 0) -> str:
        config = self.container_config(n)
        created = self.client.rt(
            "CreateContainer",
            pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=self.pods[pod_id]),
        )
        self.client.rt("StartContainer", pb.StartContainerRequest(container_id=created.container_id))
        return str(created.container_id)

    def remove_container(self, container_id: str) -> None:
        self.client.rt("StopContainer", pb.StopContainerRequest(container_id=container_id, timeout=0))
        self.client.rt("RemoveContainer", pb.RemoveContainerRequest(container_id=container_id))

    def remove_pod(self, pod_id: str) -> None:
        self.client.rt("StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        self.client.rt("RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        self.pods.pop(pod_id, None)

    def cleanup(self) -> list[str]:
        """Remove every pod this workload started; returns the errors (cleanup goes on past them)."""
        errors: list[str] = []
        for pod_id in list(self.pods):
            try:
                self.remove_pod(pod_id)
            except (RPCError, Skip) as exc:
                errors.append(f"{pod_id[:12]}: {exc}")
                self.pods.pop(pod_id, None)
        return errors
