"""The containers subsystem with real collaborators (store, cgroupfs driver, runc, conmon), in this process.

Pods and images come from their own subsystems in the end-to-end tests; here a pod is a record with
the host's namespaces and a private cgroup parent, and an image is one layer dir made from Debian's
busybox-static, both handed over as small fakes of the interfaces the subsystem takes
(cri/containers/deps.py), so the container machinery can be tested on its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calyx_base.cleanups import Cleanups
from calyx_base.errors import NotFound
from cri.api import api_pb2 as pb
from cri.config import Config
from cri.containers.model import Container
from cri.containers.records import ContainerRecords
from cri.containers.subsystem import Containers, build_containers
from cri.store import Store
from sandbox.apparmor import AppArmor
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
    user_ns_path: str | None = None
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
        self._locks: dict[str, threading.RLock] = {}

    def get(self, pod_id: str) -> HostPod:
        try:
            return self.pods[pod_id]
        except KeyError:
            raise NotFound(f"pod {pod_id} not found") from None

    def resolve_id(self, pod_id: str) -> str:
        return self.get(pod_id).id

    @contextlib.contextmanager
    def locked(self, pod_id: str) -> Iterator[None]:
        with self._locks.setdefault(pod_id, threading.RLock()):
            yield

    def list(self) -> list[HostPod]:
        return list(self.pods.values())


class RecordedEvents:
    """The events the subsystem published, as (container id, event type)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def container_changed(self, container: Container, event_type: int) -> None:
        self.seen.append((container.id, event_type))


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
        self.cgroups = build_driver("cgroupfs")
        self.events = RecordedEvents()
        self.containers = self._build()

    def _build(self) -> Containers:
        self.store = Store(self.config.root / "calyx.db")
        self.cleanups = Cleanups(3600)
        containers = build_containers(
            ContainerRecords(self.store, self.config.root / "containers"),
            self.config.runtime,
            systemd_cgroup=False,
            run_root=self.config.run_root,
            pods=self.pods,
            images=LocalImages(self.image),
            cgroups=self.cgroups,
            events=self.events,
            cleanups=self.cleanups,
            apparmor=AppArmor(),
        )
        containers.recover()
        self._open = True
        return containers

    def stop(self) -> None:
        """What a daemon stop does to the containers subsystem (containers keep running)."""
        if self._open:
            self.containers.close()
            self.cleanups.close()
            self.store.close()
            self._open = False

    def restart(self) -> None:
        """What a daemon restart does to the containers subsystem: a new one recovering from the store."""
        self.stop()
        self.containers = self._build()

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
        cid = self.containers.lifecycle.create(pod.id, self.config_for(name, command, **kw))
        self.containers.lifecycle.start(cid)
        return cid

    def close(self) -> None:
        for c in self.containers.exits.list():
            self.containers.lifecycle.remove(c.id)
        self.cgroups.remove_parent(self.cgroup_parent)
        self.stop()
