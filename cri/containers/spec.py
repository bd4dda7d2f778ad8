"""The OCI runtime spec (config.json) of a container, from its CRI config, its image and its pod.

A pure function of its inputs plus reads of the rootfs (users, groups) and of the host (devices, mount
propagation, this process's oom_score_adj), so that it can be unit-tested without runc. It makes nothing:
the dirs the spec needs are named in the result, and CreateContainer makes them (cri/containers/create.py),
with the undo of its other steps.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calyx_base.errors import InvalidArgument
from cri import enums
from cri.api import api_pb2 as pb
from cri.containers import arglimits, idmapped, seccomp_localhost, userns
from cri.containers import binds as mnt
from cri.containers import capabilities as caps
from cri.containers.deps import PodView
from cri.containers.devices import device_config
from cri.containers.seccomp_default import default_profile
from cri.containers.userns_nodes import PodIds
from cri.containers.users import ProcessUser, resolve_user
from sandbox.shm import HOST_SHM

log = logging.getLogger("cri.containers.spec")

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TTY_TERM = "xterm"  # TERM of a process with a terminal whose env names none (CRI-O's choice too)

DEFAULT_MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
DEFAULT_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


@dataclass
class SpecInputs:
    container_id: str
    config: pb.ContainerConfig
    image_config: dict[str, Any]
    image_name: str
    pod: PodView
    rootfs: Path
    cgroups_path: str
    resources: dict[str, Any]
    # /proc/<pid>/ns/pid of the target container when namespace_options.pid is TARGET.
    target_pid_ns: str | None = None
    # A private cgroup namespace (cgroup v2 hosts, as containerd does there).
    cgroup_namespace: bool = False
    # Host dir bound on /dev/shm (the pod's shared tmpfs, or the host's); None: a tmpfs of its own.
    shm_source: str | None = None
    # {index in config.mounts: staged host path} of the image volumes (cri/containers/image_volumes.py).
    image_volume_sources: dict[int, str] = field(default_factory=dict)
    # The AppArmor profile runc applies (cri/containers/apparmor.py decides it); None: unconfined.
    apparmor_profile: str | None = None
    extra_annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class BuiltSpec:
    spec: dict[str, Any]
    user: ProcessUser
    mounts: list[pb.Mount]
    # The bind mounts (entries of spec["mounts"]) to idmap through the pod's user namespace before runc
    # runs (cri/containers/idmapped.py); empty outside a pod user namespace. Those also in
    # ``idmap_optional`` (the pod's own files) are bound as they are where idmapping is refused.
    idmapped: list[dict[str, Any]] = field(default_factory=list)
    idmap_optional: list[dict[str, Any]] = field(default_factory=list)
    # {destination: the device and spec file it is from} of the CDI mounts among them, for their errors.
    idmap_origins: dict[str, str] = field(default_factory=dict)
    # In a pod user namespace, the bind mounts (entries of spec["mounts"]) standing for the CRI's devices.
    device_binds: list[dict[str, Any]] = field(default_factory=list)
    # Dirs to make before runc runs: in the rootfs, the image's declared Volumes (plain dirs, nothing is
    # mounted on them) and the working dir; on the host, the CRI mounts' host paths where missing.
    rootfs_dirs: list[str] = field(default_factory=list)
    host_dirs: list[str] = field(default_factory=list)

    def yield_device_binds(self) -> None:
        """A CDI device node replaces a CRI device at its path (cri/containers/cdi/inject.py); in a pod
        user namespace the CRI's devices are bind mounts, not ``linux.devices`` entries: those at the
        path of a node CDI added go."""
        nodes = {d.get("path") for d in self.spec.get("linux", {}).get("devices") or []}
        replaced = [m for m in self.device_binds if m["destination"] in nodes]
        if replaced:
            self.spec["mounts"] = [m for m in self.spec["mounts"] if not any(m is r for r in replaced)]
            self.device_binds = [m for m in self.device_binds if not any(m is r for r in replaced)]

    def idmap_added(self, added: dict[str, tuple[dict[str, Any], str]]) -> None:
        """In a pod user namespace, the bind mounts a CDI spec added (cri/containers/cdi: {destination:
        (OCI mount, origin)}) are idmapped as the CRI's own are; a mount one of them replaced is not."""
        kept = self.spec.get("mounts") or []

        def still_in_spec(mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [m for m in mounts if any(m is k for k in kept)]

        self.idmapped = still_in_spec(self.idmapped)
        self.idmap_optional = still_in_spec(self.idmap_optional)
        for mount, origin in added.values():
            if mount.get("type") == "bind":
                self.idmapped.append(mount)
                self.idmap_origins[str(mount["destination"])] = origin


def process_args(config: pb.ContainerConfig, image_config: dict[str, Any]) -> list[str]:
    """kubelet's rule: CRI command replaces the image Entrypoint (and drops its Cmd); CRI args replace Cmd."""
    entrypoint = list(image_config.get("Entrypoint") or [])
    cmd = list(image_config.get("Cmd") or [])
    if config.command:
        argv = [*config.command, *config.args]
    elif config.args:
        argv = [*entrypoint, *config.args]
    else:
        argv = [*entrypoint, *cmd]
    if not argv:
        raise InvalidArgument("no command: the container config and the image both leave it empty")
    return argv


def process_env(config: pb.ContainerConfig, image_config: dict[str, Any], hostname: str) -> list[str]:
    """Image env first, then the CRI's; a key set by both takes the CRI value in the image's position.
    A process with a terminal gets TERM=xterm unless either sets TERM (as CRI-O does)."""
    merged: dict[str, str] = {}
    for item in image_config.get("Env") or []:
        key, _, value = str(item).partition("=")
        merged[key] = value
    for kv in config.envs:
        # CRI 1.36 carries values as bytes (they need not be UTF-8); the OCI spec is JSON text.
        value = kv.value
        merged[kv.key] = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    if "PATH" not in merged:
        merged["PATH"] = DEFAULT_PATH.partition("=")[2]
    if hostname and "HOSTNAME" not in merged:
        merged["HOSTNAME"] = hostname
    if config.tty and "TERM" not in merged:
        merged["TERM"] = TTY_TERM
    return [f"{k}={v}" for k, v in merged.items()]


def current_oom_score_adj() -> int:
    try:
        return int(Path("/proc/self/oom_score_adj").read_text())
    except (OSError, ValueError):
        return 0


def clamp_oom_score_adj(requested: int) -> int:
    """Never ask for less than we have: without CAP_SYS_RESOURCE lowering fails and runc dies obscurely."""
    return max(min(requested, 1000), current_oom_score_adj())


def _security(config: pb.ContainerConfig) -> pb.LinuxContainerSecurityContext:
    return config.linux.security_context


def _namespaces(inputs: SpecInputs) -> list[dict[str, str]]:
    pod = inputs.pod
    sc = _security(inputs.config)
    nss: list[dict[str, str]] = [{"type": "mount"}]
    for kind, path in (("network", pod.netns_path), ("ipc", pod.ipc_ns_path), ("uts", pod.uts_ns_path)):
        if path:
            nss.append({"type": kind, "path": path})
        elif kind == "uts" and pod.namespace_options.get("network") != "NODE":
            nss.append({"type": kind})
    if inputs.cgroup_namespace:
        nss.append({"type": "cgroup"})
    user_ns = userns.pod_user_ns(pod)
    if user_ns:
        nss.append({"type": "user", "path": user_ns})
    pid_mode = sc.namespace_options.pid
    if pid_mode == pb.NODE:
        pass
    elif pid_mode == pb.POD and pod.pid_ns_path:
        nss.append({"type": "pid", "path": pod.pid_ns_path})
    elif pid_mode == pb.TARGET:
        if not inputs.target_pid_ns:
            raise InvalidArgument("pid namespace TARGET needs a running target container")
        nss.append({"type": "pid", "path": inputs.target_pid_ns})
    else:
        nss.append({"type": "pid"})
    return nss


def _pod_file_mounts(inputs: SpecInputs, taken: set[str], readonly: bool) -> list[dict[str, Any]]:
    pod = inputs.pod
    out = []
    for dest, src in (
        ("/etc/resolv.conf", pod.resolv_conf_path),
        ("/etc/hosts", pod.hosts_path),
        ("/etc/hostname", pod.hostname_path),
    ):
        if src and dest not in taken and os.path.exists(src):
            out.append(
                {
                    "destination": dest,
                    "type": "bind",
                    "source": src,
                    "options": ["rbind", "rprivate", "ro" if readonly else "rw"],
                }
            )
    return out


def _seccomp(sc: pb.LinuxContainerSecurityContext, capabilities: list[str]) -> dict[str, Any] | None:
    """The OCI seccomp object, or None for unconfined."""
    if sc.privileged:
        return None
    kind: str
    ref = ""
    if sc.HasField("seccomp"):
        kind = enums.name_of(pb.SecurityProfile.ProfileType, sc.seccomp.profile_type, "seccomp.profile_type")
        ref = sc.seccomp.localhost_ref
    elif sc.seccomp_profile_path:
        path = sc.seccomp_profile_path
        if path in ("runtime/default", "docker/default"):
            kind = "RuntimeDefault"
        elif path == "unconfined":
            kind = "Unconfined"
        elif path.startswith("localhost/"):
            kind, ref = "Localhost", path[len("localhost/") :]
        else:
            raise InvalidArgument(f"unknown seccomp profile {path!r}")
    else:
        kind = "Unconfined"
    if kind == "Unconfined":
        return None
    if kind == "RuntimeDefault":
        return default_profile(capabilities)
    return seccomp_localhost.load(ref)


def _user(inputs: SpecInputs) -> ProcessUser:
    sc = _security(inputs.config)
    run_as_user = sc.run_as_user.value if sc.HasField("run_as_user") else None
    run_as_group = sc.run_as_group.value if sc.HasField("run_as_group") else None
    if run_as_group is not None and run_as_user is None and not sc.run_as_username:
        raise InvalidArgument("run_as_group is set without run_as_user or run_as_username")
    return resolve_user(
        inputs.rootfs,
        str(inputs.image_config.get("User") or ""),
        run_as_user,
        sc.run_as_username,
        run_as_group,
        list(sc.supplemental_groups),
        sc.supplemental_groups_policy == pb.Strict,
    )


def _working_dir(inputs: SpecInputs) -> str:
    cwd = inputs.config.working_dir or str(inputs.image_config.get("WorkingDir") or "") or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"working dir {cwd!r} must be absolute")
    return cwd


def _image_volumes(inputs: SpecInputs) -> list[str]:
    """The image's declared Volumes (absolute ones): plain dirs of the rootfs."""
    return [str(path) for path in inputs.image_config.get("Volumes") or {} if str(path).startswith("/")]


def pod_privileged(pod: PodView) -> bool:
    sc = (pod.linux or {}).get("security_context") or {}
    return bool(sc.get("privileged"))


def build(inputs: SpecInputs) -> BuiltSpec:
    config = inputs.config
    sc = _security(config)
    privileged = sc.privileged
    if privileged and not pod_privileged(inputs.pod):
        raise InvalidArgument("a privileged container needs a privileged pod")
    if sc.namespace_options.HasField("userns_options"):
        userns.check_request(inputs.pod, sc.namespace_options.userns_options)
    id_maps = userns.mappings(inputs.pod)
    if privileged and id_maps is not None:
        raise InvalidArgument("a privileged container cannot run in a pod user namespace")
    if sc.selinux_options.type or sc.selinux_options.level:
        log.info(
            "selinux requested, not available on this host: ignored",
            extra={"container_id": inputs.container_id},
        )

    user = _user(inputs)
    volumes = _image_volumes(inputs)
    capabilities = caps.compute(
        list(sc.capabilities.add_capabilities), list(sc.capabilities.drop_capabilities), privileged
    )
    ambient = [caps.normalize(c) for c in sc.capabilities.add_ambient_capabilities]
    process: dict[str, Any] = {
        "terminal": config.tty,
        # The primary gid is listed too, as containerd does: getgroups() then shows it like a login would.
        "user": {
            "uid": user.uid,
            "gid": user.gid,
            "additionalGids": list(dict.fromkeys([user.gid, *user.additional_gids])),
        },
        "args": process_args(config, inputs.image_config),
        "env": process_env(config, inputs.image_config, inputs.pod.hostname),
        "cwd": _working_dir(inputs),
        "capabilities": {
            "bounding": capabilities,
            "effective": capabilities,
            "permitted": capabilities,
            "inheritable": [c for c in ambient if c in capabilities],
            "ambient": [c for c in ambient if c in capabilities],
        },
        "noNewPrivileges": sc.no_new_privs,
        "oomScoreAdj": clamp_oom_score_adj(config.linux.resources.oom_score_adj),
    }
    arglimits.check(process["args"], process["env"], "the container's command", inputs.container_id)
    if inputs.apparmor_profile:
        process["apparmorProfile"] = inputs.apparmor_profile

    mounts = mnt.base_mounts(readonly_sys=not privileged)
    taken = {m.container_path for m in config.mounts}
    mounts = [m for m in mounts if m["destination"] not in taken]
    # Bind mounts of what Calyx made for the pod: its /dev/shm, hosts, hostname and resolv.conf.
    pod_owned: list[dict[str, Any]] = []
    if inputs.shm_source and "/dev/shm" not in taken:
        mounts = [m for m in mounts if m["destination"] != "/dev/shm"]
        options = ["rbind", "rprivate", "nosuid", "nodev", "noexec", "rw"]
        shm = {"destination": "/dev/shm", "type": "bind", "source": inputs.shm_source, "options": options}
        mounts.append(shm)
        if inputs.shm_source != HOST_SHM:
            pod_owned.append(shm)
    pod_files = _pod_file_mounts(inputs, taken, sc.readonly_rootfs)
    mounts.extend(pod_files)
    pod_owned += pod_files
    # In a pod user namespace they are staged in the container dir (the pod's dirs are root's alone and
    # runc binds them as the container's root: cri/statedirs.py), idmapped where the kernel can: files
    # Calyx wrote as host root are root's inside too.
    to_idmap = list(pod_owned) if id_maps is not None else []
    rootfs_propagation = ""
    host_dirs: list[str] = []
    by_depth = sorted(enumerate(config.mounts), key=lambda m: m[1].container_path.rstrip("/").count("/"))
    for index, cri_mount in by_depth:
        if cri_mount.image.image:
            # An image volume's layers are idmapped as they are staged (as the rootfs layers are); its
            # mappings, if kubelet sent them, must still be the pod's.
            idmapped.wanted(cri_mount, id_maps)
            mounts.append(mnt.image_volume_mount(cri_mount, inputs.image_volume_sources[index]))
            continue
        oci, propagation = mnt.oci_mount(cri_mount)
        mounts.append(oci)
        host_dirs.append(cri_mount.host_path)
        if idmapped.wanted(cri_mount, id_maps):
            to_idmap.append(oci)
        if propagation == "rshared" or (propagation == "rslave" and rootfs_propagation != "rshared"):
            rootfs_propagation = propagation

    pod_ids = None
    if id_maps is not None:
        pod_ids = PodIds.of_oci([id_maps[0].to_oci()], [id_maps[1].to_oci()])
    devices, device_rules, device_binds = device_config(config, privileged, pod_ids)
    mounts.extend(device_binds)  # last, as runc makes device nodes after every mount
    resources = dict(inputs.resources)
    resources["devices"] = device_rules
    linux: dict[str, Any] = {
        "namespaces": _namespaces(inputs),
        "cgroupsPath": inputs.cgroups_path,
        "resources": resources,
        "devices": devices,
    }
    if id_maps is not None:
        linux["uidMappings"] = [id_maps[0].to_oci()]
        linux["gidMappings"] = [id_maps[1].to_oci()]
    sysctls = (inputs.pod.linux or {}).get("sysctls") or {}
    if sysctls:
        linux["sysctl"] = dict(sysctls)
    if rootfs_propagation:
        linux["rootfsPropagation"] = rootfs_propagation
    if not privileged:
        linux["maskedPaths"] = _union(DEFAULT_MASKED_PATHS, list(sc.masked_paths))
        linux["readonlyPaths"] = _union(DEFAULT_READONLY_PATHS, list(sc.readonly_paths))
    seccomp = _seccomp(sc, capabilities)
    if seccomp is not None:
        linux["seccomp"] = seccomp

    annotations = dict(config.annotations)
    annotations.update(inputs.extra_annotations)
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": sc.readonly_rootfs},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    }
    return BuiltSpec(
        spec=spec,
        user=user,
        mounts=list(config.mounts),
        idmapped=to_idmap,
        idmap_optional=list(pod_owned) if id_maps is not None else [],
        device_binds=device_binds,
        rootfs_dirs=[*volumes, process["cwd"]],
        host_dirs=host_dirs,
    )


def _union(first: list[str], second: list[str]) -> list[str]:
    out = list(first)
    for item in second:
        if item not in out:
            out.append(item)
    return out
