"""A ContainerManager on a real Runtime (store, cgroupfs driver, runc, conmon), in this process.

Pods and images come from their own subsystems in the end-to-end tests; here a pod is a record with
the host's namespaces and a private cgroup parent, and an image is one layer dir made from Debian's
busybox-static, so the container machinery can be tested on its own.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calyx_base.errors import NotFound
from cri.api import api_pb2 as pb
from cri.config import Config
from cri.containers.manager import ContainerManager
from cri.runtime import Runtime
from cri.store import Store
from sandbox.cgroups import build_driver

BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "cat", "echo", "id", "ls", "sleep", "touch", "tail", "unshare", "mount", "grep", "true"]


def busybox_layer(path: Path) -> Path:
    """A rootfs with busybox (applets as hard links), a user and groups, and a few dirs."""
    (path / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    for applet in APPLETS:
        os.link(path / "bin" / "busybox", path / "bin" / applet)
    for d in ("etc", "tmp", "proc", "sys", "dev", "root"):
        (path / d).mkdir(exist_ok=True)
    (path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1234:2345:Alice:/home/alice:/bin/sh\n"
    )
    (path / "etc" / "group").write_text("root:x:0:\nalicegrp:x:2345:\nextra:x:3456:alice\nother:x:4567:bob\n")
    return path


@dataclass
class LocalImage:
    id: str
    layer_dirs: list[Path]
    config: dict[str, Any]
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    size: int = 0


class LocalImages:
    def __init__(self, image: LocalImage) -> None:
        self.image = image

    def resolve(self, ref: str) -> LocalImage:
        if ref in (self.image.id, "busybox"):
            return self.image
        raise NotFound(f"image {ref} not found")

    def recover(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class HostPod:
    id: str
    cgroup_parent: str
    log_directory: str
    state: str = "READY"
    hostname: str = "cxtest"
    netns_path: str | None = None
    ipc_ns_path: str | None = None
    uts_ns_path: str | None = None
    pid_ns_path: str | None = None
    namespace_options: dict[str, Any] = field(default_factory=lambda: {"network": "NODE"})
    resolv_conf_path: str | None = None
    hosts_path: str | None = None
    hostname_path: str | None = None
    linux: dict[str, Any] = field(default_factory=dict)
    runtime_handler: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "READY"


class HostPods:
    def __init__(self) -> None:
        self.pods: dict[str, HostPod] = {}

    def get(self, pod_id: str) -> HostPod:
        try:
            return self.pods[pod_id]
        except KeyError:
            raise NotFound(f"pod {pod_id} not found") from None

    def recover(self) -> None:
        pass

    def close(self) -> None:
        pass


class Harness:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.config = Config()
        self.config.state.root = str(base / "lib")
        self.config.state.run_root = str(base / "run")
        self.cgroup_parent = f"/cxtest-{secrets.token_hex(4)}"
        self.image = LocalImage("sha256:" + "ab" * 32, [busybox_layer(base / "layer")], {"Cmd": ["sh"]})
        self.pods = HostPods()
        self.logs = base / "logs"
        self.logs.mkdir()
        self.runtime = self._build()

    def _build(self) -> Runtime:
        runtime = Runtime(self.config, Store(self.config.root / "calyx.db"))
        c = self.config.cgroup
        runtime.register("cgroups", build_driver(c.driver, c.pids_limit, c.default_parent))
        runtime.register("images", LocalImages(self.image))
        runtime.register("pods", self.pods)
        runtime.register("containers", ContainerManager(runtime))
        runtime.recover()
        return runtime

    @property
    def containers(self) -> ContainerManager:
        manager: ContainerManager = self.runtime.containers  # type: ignore[attr-defined]
        return manager

    def restart(self) -> None:
        """What a daemon restart does to the containers subsystem: a new one recovering from the store."""
        self.runtime.close()
        self.runtime = self._build()

    def pod(self, **kw: Any) -> HostPod:
        pod = HostPod(
            id=secrets.token_hex(32), cgroup_parent=self.cgroup_parent, log_directory=str(self.logs), **kw
        )
        self.pods.pods[pod.id] = pod
        return pod

    def config_for(self, name: str, command: list[str], **kw: Any) -> pb.ContainerConfig:
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image="busybox"),
            command=command,
            log_path=f"{name}.log",
            **kw,
        )

    def run(self, pod: HostPod, name: str, command: list[str], **kw: Any) -> str:
        cid = self.containers.create(pod.id, self.config_for(name, command, **kw))
        self.containers.start(cid)
        return cid

    def close(self) -> None:
        manager = self.containers
        for c in manager.list():
            manager.remove(c.id)
        driver = self.runtime.cgroups  # type: ignore[attr-defined]
        driver.remove_parent(self.cgroup_parent)
        self.runtime.close()
