"""Checks on a RunPodSandboxRequest before anything is made: a bad request leaves no trace."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from calyx_base.errors import InvalidArgument
from cri import enums, fields
from cri.api import api_pb2 as pb
from cri.config import RuntimeConfig
from cri.pods.model import PodMetadata, message_dict
from sandbox import podfiles, sysctls
from sandbox.cgroups import CgroupDriver
from sandbox.cni import bandwidth

MAX_ID = 2**32 - 1  # (uid_t)-1 is never a valid id
PROTOCOLS = {pb.TCP: "tcp", pb.UDP: "udp", pb.SCTP: "sctp"}


@dataclass(frozen=True)
class RunSpec:
    """A validated, normalised RunPodSandbox request."""

    metadata: PodMetadata
    runtime_handler: str
    hostname: str
    log_directory: str
    cgroup_parent: str
    namespace_options: dict[str, Any]
    dns: podfiles.DNS
    port_mappings: list[dict[str, Any]]
    sysctls: dict[str, str]
    linux: dict[str, Any]
    config: dict[str, Any]
    labels: dict[str, str]
    annotations: dict[str, str]

    @property
    def own_net(self) -> bool:
        return self.namespace_options["network"] != "NODE"

    @property
    def own_ipc(self) -> bool:
        return self.namespace_options["ipc"] != "NODE"

    @property
    def shared_pid(self) -> bool:
        return self.namespace_options["pid"] == "POD"

    @property
    def own_userns(self) -> bool:
        return self.namespace_options["userns"].get("mode") == "POD"


def namespace_options(linux: pb.LinuxPodSandboxConfig) -> dict[str, Any]:
    options = linux.security_context.namespace_options
    userns: dict[str, Any] = {}
    if options.HasField("userns_options"):
        userns = user_namespace(options.userns_options)
        if userns["mode"] == "POD":
            host = [name for name in ("network", "pid", "ipc") if getattr(options, name) == pb.NODE]
            if host:
                raise InvalidArgument(
                    "a pod user namespace cannot be combined with the host's "
                    f"{', '.join(host)} namespace (its namespaces must be owned by the pod's)"
                )
            if linux.security_context.privileged:
                raise InvalidArgument("a privileged pod cannot have a user namespace")
    for name in ("network", "ipc"):
        if getattr(options, name) not in (pb.POD, pb.NODE):
            raise InvalidArgument(
                f"namespace_options.{name} must be POD or NODE, "
                f"not {enums.shown(pb.NamespaceMode, getattr(options, name))}"
            )
    if options.pid == pb.TARGET and not options.target_id:
        raise InvalidArgument("namespace_options.pid is TARGET but target_id is empty")
    return {
        "network": pb.NamespaceMode.Name(options.network),
        "pid": enums.name_of(pb.NamespaceMode, options.pid, "namespace_options.pid"),
        "ipc": pb.NamespaceMode.Name(options.ipc),
        "target_id": options.target_id,
        "userns": userns,
    }


def _id_mapping(kind: str, mappings: Any) -> dict[str, int]:
    if len(mappings) != 1:
        raise InvalidArgument(
            f"userns_options.{kind} must hold exactly one mapping for mode POD, got {len(mappings)}"
        )
    m = mappings[0]
    if m.container_id != 0:
        raise InvalidArgument(
            f"userns_options.{kind}: the mapping must start at container id 0 (got {m.container_id})"
        )
    if m.length == 0:
        raise InvalidArgument(f"userns_options.{kind}: the mapping has length 0")
    if m.host_id + m.length > MAX_ID:
        raise InvalidArgument(
            f"userns_options.{kind}: host ids {m.host_id}+{m.length} go past the largest id {MAX_ID - 1}"
        )
    return {"container_id": m.container_id, "host_id": m.host_id, "length": m.length}


def user_namespace(options: pb.UserNamespace) -> dict[str, Any]:
    """The pod's user namespace request, normalised: mode NODE (the host's) or POD with one uid and
    one gid mapping of container id 0 (what kubelet sends); CONTAINER and TARGET are refused."""
    mode = enums.name_of(pb.NamespaceMode, options.mode, "userns_options.mode")
    if options.mode == pb.NODE:
        if options.uids or options.gids:
            raise InvalidArgument("userns_options: mode NODE takes no uid/gid mappings")
        return {"mode": mode}
    if options.mode != pb.POD:
        raise InvalidArgument(f"userns_options.mode {mode} is not supported (use NODE or POD)")
    return {
        "mode": mode,
        "uids": [_id_mapping("uids", options.uids)],
        "gids": [_id_mapping("gids", options.gids)],
    }


def port_mappings(mappings: Any) -> list[dict[str, Any]]:
    out = []
    for m in mappings:
        if not 0 < m.container_port <= 65535:
            raise InvalidArgument(f"port mapping: container_port {m.container_port} is not a port")
        if not 0 <= m.host_port <= 65535:
            raise InvalidArgument(f"port mapping: host_port {m.host_port} is not a port")
        if m.protocol not in PROTOCOLS:
            raise InvalidArgument(f"port mapping: unknown protocol {m.protocol}")
        # It goes into iptables rules and the CNI portmap plugin's config: its normal form only.
        host_ip = fields.ip_address("port mapping host_ip", m.host_ip) if m.host_ip else ""
        out.append(
            {
                "protocol": PROTOCOLS[m.protocol],
                "container_port": m.container_port,
                "host_port": m.host_port,
                "host_ip": host_ip,
            }
        )
    return out


def validate(request: pb.RunPodSandboxRequest, handlers: RuntimeConfig, cgroups: CgroupDriver) -> RunSpec:
    cfg = request.config
    meta = cfg.metadata
    for name in ("name", "namespace", "uid"):
        if not getattr(meta, name):
            raise InvalidArgument(f"pod sandbox metadata.{name} is required")
        # They go into CNI_ARGS ("K8S_POD_NAME=...;..."), logs and events.
        fields.name(f"pod sandbox metadata.{name}", getattr(meta, name))
    handler = request.runtime_handler or handlers.default_handler
    if handler not in handlers.handlers:
        raise InvalidArgument(
            f"runtime handler {handler!r} is not configured (have: {', '.join(sorted(handlers.handlers))})"
        )
    options = namespace_options(cfg.linux)
    own_net = options["network"] != "NODE"
    hostname = cfg.hostname or socket.gethostname()
    podfiles.validate_hostname(hostname)
    dns = podfiles.DNS(
        list(cfg.dns_config.servers), list(cfg.dns_config.searches), list(cfg.dns_config.options)
    )
    podfiles.validate_dns(dns)
    log_directory = (
        fields.clean_absolute_path("log_directory", cfg.log_directory) if cfg.log_directory else ""
    )
    try:
        bandwidth.from_annotations(dict(cfg.annotations))
    except ValueError as exc:
        raise InvalidArgument(f"pod bandwidth annotation: {exc}") from None
    requested_sysctls = dict(cfg.linux.sysctls)
    sysctls.validate(requested_sysctls, own_net=own_net, own_ipc=options["ipc"] != "NODE")
    parent = cfg.linux.cgroup_parent
    if parent:  # else the driver's default parent
        cgroups.validate_parent(parent)
    linux = {
        "cgroup_parent": parent,
        "sysctls": requested_sysctls,
        "security_context": message_dict(cfg.linux.security_context),
        "overhead": message_dict(cfg.linux.overhead),
        "resources": message_dict(cfg.linux.resources),
    }
    return RunSpec(
        metadata=PodMetadata(meta.name, meta.uid, meta.namespace, meta.attempt),
        runtime_handler=handler,
        hostname=hostname,
        log_directory=log_directory,
        cgroup_parent=parent,
        namespace_options=options,
        dns=dns,
        port_mappings=port_mappings(cfg.port_mappings) if own_net else [],
        sysctls=requested_sysctls,
        linux=linux,
        config=message_dict(cfg),
        labels=dict(cfg.labels),
        annotations=dict(cfg.annotations),
    )
