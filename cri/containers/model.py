"""The container record: what Calyx knows of one container, persisted as JSON in the store.

``state`` is the CRI state plus ``CREATING``, the intent recorded before any side effect of a create,
so that recovery finds and removes what a crash left half-made, and ``REMOVING``, the same for a
removal (recovery finishes it).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calyx_base import files
from cri.api import api_pb2 as pb

KIND = "container"

CREATING = "CREATING"
CREATED = "CREATED"
RUNNING = "RUNNING"
EXITED = "EXITED"
UNKNOWN = "UNKNOWN"
# Recorded before a removal's first step: recovery finishes the removal of a container in this state.
REMOVING = "REMOVING"

PB_STATE = {
    CREATING: pb.CONTAINER_UNKNOWN,
    CREATED: pb.CONTAINER_CREATED,
    RUNNING: pb.CONTAINER_RUNNING,
    EXITED: pb.CONTAINER_EXITED,
    UNKNOWN: pb.CONTAINER_UNKNOWN,
    REMOVING: pb.CONTAINER_EXITED,
}


@dataclass
class Container:
    id: str
    pod_id: str
    name: str
    attempt: int
    state: str
    created_at: int
    dir: str
    handler: str
    runtime_path: str
    runtime_root: str
    image: str = ""
    image_ref: str = ""
    image_id: str = ""
    user_specified_image: str = ""
    image_annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    log_path: str = ""
    cgroup_parent: str = ""
    cgroups_path: str = ""
    started_at: int = 0
    oom_kills_at_start: int | None = None  # the pod's parent cgroup's count (exits.py: OOMKilled)
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    pid_start: int | None = None
    conmon_pid: int = 0
    conmon_start: int | None = None
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    stop_signal: str = ""
    shared_pid_ns: bool = False
    config_b64: str = ""
    resources_b64: str = ""
    # image volumes (cri/containers/image_volumes.py ImageVolume records) and the CDI devices applied
    image_volumes: list[dict[str, Any]] = field(default_factory=list)
    cdi_devices: list[str] = field(default_factory=list)

    # --- paths -------------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The container dir: bundle (config.json, rootfs mount point), upper/work, conmon's files."""
        return Path(self.dir)

    @property
    def bundle(self) -> Path:
        return self.path

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    # --- state changes ------------------------------------------------------------------------------
    # Readers (status, list) take no lock once a container has left CREATED or RUNNING, so a change
    # writes its fields first and the state last: nobody sees EXITED without its exit code and reason.

    def mark_started(self, at_ns: int) -> None:
        self.started_at = at_ns
        self.state = RUNNING

    def mark_exited(self, code: int, at_ns: int, reason: str, message: str = "") -> None:
        self.exit_code = code
        self.finished_at = at_ns
        self.reason = reason
        self.message = message
        self.state = EXITED

    # --- protobuf fields kept as bytes --------------------------------------------------------------

    @property
    def config(self) -> pb.ContainerConfig:
        msg = pb.ContainerConfig()
        if self.config_b64:
            msg.ParseFromString(base64.b64decode(self.config_b64))
        return msg

    @property
    def resources(self) -> pb.LinuxContainerResources:
        msg = pb.LinuxContainerResources()
        if self.resources_b64:
            msg.ParseFromString(base64.b64decode(self.resources_b64))
        return msg

    def set_resources(self, resources: pb.LinuxContainerResources) -> None:
        self.resources_b64 = base64.b64encode(resources.SerializeToString()).decode()

    # --- persistence ------------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Container:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    def write_beside(self) -> None:
        """A copy next to the container (state.json), for humans and for recovery if the store is lost."""
        if self.path.is_dir():
            files.replace_text(self.path / "state.json", json.dumps(self.to_record(), sort_keys=True))


def encode_config(config: pb.ContainerConfig) -> str:
    return base64.b64encode(config.SerializeToString()).decode()
