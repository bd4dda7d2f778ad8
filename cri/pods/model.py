"""The Pod record: what Calyx knows about one pod sandbox, as other subsystems read it.

``Pod`` is frozen: a change makes a new one (``dataclasses.replace``) that replaces the old in the index
and the store together, so a reader never sees half an update. Paths are strings (they go straight into
OCI specs); a namespace path is None when the pod uses the host's namespace of that kind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from cri.api import api_pb2 as pb

READY = "READY"
NOTREADY = "NOTREADY"
KIND = "pod"


@dataclass(frozen=True)
class PodMetadata:
    name: str
    uid: str
    namespace: str
    attempt: int

    @property
    def key(self) -> tuple[str, str, str, int]:
        """Two pods with the same key are the same pod to kubelet (ALREADY_EXISTS)."""
        return (self.name, self.namespace, self.uid, self.attempt)

    def to_pb(self) -> pb.PodSandboxMetadata:
        return pb.PodSandboxMetadata(
            name=self.name, uid=self.uid, namespace=self.namespace, attempt=self.attempt
        )


@dataclass(frozen=True)
class Pod:
    id: str
    metadata: PodMetadata
    state: str  # READY / NOTREADY
    created_at: int  # ns since the epoch
    labels: dict[str, str]
    annotations: dict[str, str]
    runtime_handler: str
    log_directory: str
    cgroup_parent: str
    hostname: str
    netns_path: str | None
    ipc_ns_path: str | None
    uts_ns_path: str | None
    pid_ns_path: str | None  # the shared PID namespace (pid == POD), held by catatonit
    namespace_options: dict[str, Any]  # network/pid/ipc: "POD"/"CONTAINER"/"NODE"/"TARGET", target_id, userns
    pod_dir: str
    resolv_conf_path: str
    hosts_path: str
    hostname_path: str
    ips: list[str]
    linux: dict[str, Any]  # sysctls, security_context, overhead, resources (CRI field names)
    config: dict[str, Any]  # the PodSandboxConfig as given (proto field names); see config_pb()
    network: dict[str, Any] = field(default_factory=dict)  # how the pod was attached (for teardown)
    complete: bool = True  # False while RunPodSandbox is still making it (recovery removes such pods)
    removing: bool = False  # RemovePodSandbox has begun: recovery finishes it (cri/pods/remove.py)
    # The pod's own user namespace (userns_options mode POD), owner of its NET/IPC/UTS/PID namespaces.
    user_ns_path: str | None = None

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def host_network(self) -> bool:
        return self.namespace_options.get("network") == "NODE"

    def config_pb(self) -> pb.PodSandboxConfig:
        return json_format.ParseDict(self.config, pb.PodSandboxConfig(), ignore_unknown_fields=True)

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Pod:
        data = dict(record)
        data["metadata"] = PodMetadata(**data["metadata"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def message_dict(message: Any) -> dict[str, Any]:
    """A proto message as a JSON-able dict with the proto field names (as CRI's verbose info shows)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
