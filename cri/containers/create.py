"""CreateContainer: plan (every check and lookup, nothing made), then record the intent and make the
container step by step, each step's undo pushed as it succeeds.

The undo stack is dropped only once the container is recorded as CREATED; a failure unwinds it and the
request leaves nothing behind, and a crash in the middle leaves a CREATING record that recovery
cleans. The images the container uses (its own, its image volumes') count as in use from the plan on,
so a RemoveImage meanwhile is refused instead of taking the layers from under the create.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calyx_base import failpoints, files
from calyx_base.cleanups import Cleanups
from calyx_base.errors import FailedPrecondition, InvalidArgument
from cri import enums, statedirs
from cri.api import api_pb2 as pb
from cri.containers import apparmor, binds, cdi, idmapped, image_volumes, rootfs, staging, validate
from cri.containers import spec as oci
from cri.containers import userns as container_userns
from cri.containers.deps import ImageResolver, ImageView, PodLookup, PodView
from cri.containers.exits import ExitTracker
from cri.containers.model import CREATED, CREATING, RUNNING, Container, encode_config
from cri.containers.monitor import Monitor, check_log_path, signal_number, wait_monitor_gone
from cri.containers.monitors import Monitors
from cri.containers.procinfo import alive, start_time
from cri.containers.records import ContainerRecords
from cri.containers.resources import to_oci
from cri.containers.users import make_inside
from sandbox import mounts, shm
from sandbox.apparmor import AppArmor
from sandbox.cgroups import CgroupDriver
from sandbox.cgroups.hierarchy import Mode

log = logging.getLogger("cri.containers.create")


@dataclass(frozen=True)
class CreateDeps:
    records: ContainerRecords
    monitors: Monitors
    exits: ExitTracker
    pods: PodLookup
    images: ImageResolver
    cgroups: CgroupDriver
    cdi: cdi.Registry
    apparmor: AppArmor
    cleanups: Cleanups
    default_handler: str
    run_root: Path


@dataclass
class Plan:
    """A create, checked and looked up, before anything is made."""

    config: pb.ContainerConfig
    pod: PodView
    image: ImageView
    volumes: list[image_volumes.Resolved]
    devices: list[cdi.Device]
    target_pid_ns: str | None
    monitor: Monitor
    container: Container
    apparmor_profile: str | None = None
    user_ns: Path | None = None
    owner: tuple[int, int] | None = None
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def image_ids(self) -> set[str]:
        return {self.image.id, *(v.volume.image_id for v in self.volumes)}


def create_container(deps: CreateDeps, pod_id: str, config: pb.ContainerConfig) -> Container:
    """Make the container; it is indexed, CREATED, when this returns (the caller holds the pod lock)."""
    start = time.monotonic()
    plan = _plan(deps, pod_id, config)
    c = plan.container
    with (
        deps.records.reserve_name(c.pod_id, c.name, c.attempt, c.id),
        deps.records.hold_images(c.id, plan.image_ids),
        contextlib.ExitStack() as held,  # until the create ends, either way
        contextlib.ExitStack() as undo,  # only if it fails, first
    ):
        _confirm_images(deps, plan)
        _record_intent(deps, plan, undo)
        _make_dir(deps, plan, undo)
        _mount_rootfs(plan, undo)
        volume_sources = _stage_image_volumes(plan, undo)
        built = _build_spec(deps, plan, volume_sources)
        _make_dirs(plan, built, held)
        _stage_idmapped(plan, built, undo)
        _prepare_paths(plan, built, undo)
        _write_bundle(plan, built)
        _launch(deps, plan, undo)
        c.state = CREATED
        deps.records.persist(c)
        deps.records.index(c)
        undo.pop_all()
    log.info(
        "container created",
        extra={
            "container_id": c.id,
            "pod_id": c.pod_id,
            "container_name": c.name,
            **({"cdi_devices": ",".join(c.cdi_devices)} if plan.devices else {}),
            **({"image_volumes": len(plan.volumes)} if plan.volumes else {}),
            "duration_ms": (time.monotonic() - start) * 1000,
        },
    )
    return c


# --- the plan: checks and lookups ---------------------------------------------------------------------


def _plan(deps: CreateDeps, pod_id: str, config: pb.ContainerConfig) -> Plan:
    validate.check(config)
    pod = deps.pods.get(pod_id)
    if not pod.ready:
        raise FailedPrecondition(f"pod {pod.id} is not ready", pod.id)
    image = deps.images.resolve(config.image.image)
    # Refused before anything is made: an image volume kubelet did not pull, an unknown CDI device.
    volumes = image_volumes.resolve(config.mounts, deps.images)
    devices = deps.cdi.resolve(cdi.requested([d.name for d in config.CDI_devices], config.annotations))
    target_pid_ns = _target_pid_ns(deps, pod, config)
    handler = pod.runtime_handler or deps.default_handler
    monitor = deps.monitors.get(handler)
    container_id = secrets.token_hex(32)
    parent = pod.cgroup_parent or ""
    sc = config.linux.security_context
    apparmor_profile = apparmor.profile_for(sc, deps.apparmor, container_id)
    container = Container(
        id=container_id,
        pod_id=pod.id,
        name=config.metadata.name,
        attempt=config.metadata.attempt,
        state=CREATING,
        created_at=time.time_ns(),
        dir=str(deps.records.dir_of(container_id)),
        handler=handler,
        runtime_path=monitor.runtime_path,
        runtime_root=str(monitor.runtime_root),
        image=_image_name(config.image.image, image),
        image_ref=(image.repo_digests[0] if image.repo_digests else image.id),
        image_id=image.id,
        user_specified_image=config.image.user_specified_image,
        image_annotations=dict(config.image.annotations),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        log_path=_log_path(pod, config),
        cgroup_parent=parent,
        cgroups_path=deps.cgroups.container_cgroups_path(parent, container_id),
        stop_signal=_stop_signal(config, image.config),
        shared_pid_ns=sc.namespace_options.pid != pb.CONTAINER,
        config_b64=encode_config(config),
        image_volumes=[v.volume.to_record() for v in volumes],
        cdi_devices=[str(d.name) for d in devices],
    )
    container.set_resources(config.linux.resources)
    check_log_path(container.log_path, container_id)
    user_ns = container_userns.pod_user_ns(pod)
    return Plan(
        config,
        pod,
        image,
        volumes,
        devices,
        target_pid_ns,
        monitor,
        container,
        apparmor_profile=apparmor_profile,
        user_ns=Path(user_ns) if user_ns else None,
        owner=container_userns.root_owner(pod),
    )


def _target_pid_ns(deps: CreateDeps, pod: PodView, config: pb.ContainerConfig) -> str | None:
    options = config.linux.security_context.namespace_options
    if options.pid != pb.TARGET:
        return None
    target = deps.exits.get(options.target_id)
    # The PID must still be the target's own process (start time checked), not a reused one.
    if target.pod_id != pod.id or target.state != RUNNING or not alive(target.pid, target.pid_start):
        raise FailedPrecondition("pid namespace target must be a running container of the same pod")
    return f"/proc/{target.pid}/ns/pid"


def _log_path(pod: PodView, config: pb.ContainerConfig) -> str:
    """The CRI log file: ``log_path`` (relative and clean: validate.check) in the pod's log directory.
    Without one there is no log file, as with containerd (it used to land in the daemon's cwd)."""
    if not config.log_path:
        return ""
    if not pod.log_directory:
        log.warning("log_path given, but the pod has no log_directory: no log file", extra={"pod_id": pod.id})
        return ""
    return os.path.join(pod.log_directory, config.log_path)


def _stop_signal(config: pb.ContainerConfig, image_config: dict[str, Any]) -> str:
    if config.stop_signal:
        return enums.name_of(pb.Signal, config.stop_signal, "stop_signal")
    image_signal = str(image_config.get("StopSignal") or "")
    if image_signal:
        signal_number(image_signal)  # refuse an unknown one now rather than at stop
        return image_signal
    return "SIGTERM"


def _image_name(requested: str, image: ImageView) -> str:
    """The name status reports: kubelet asks by image id; like containerd, answer with a repo tag then."""
    bare = requested.removeprefix("sha256:")
    by_id = len(bare) >= 12 and all(ch in "0123456789abcdef" for ch in bare) and image.id.endswith(bare)
    if by_id and image.repo_tags:
        return str(image.repo_tags[0])
    return requested


def _confirm_images(deps: CreateDeps, plan: Plan) -> None:
    """The images are held now (RemoveImage refuses them); one removed between the plan and the hold
    is NotFound, as if the create had come after the removal."""
    for image_id in sorted(plan.image_ids):
        deps.images.resolve(image_id)


# --- the steps, each pushing its undo -----------------------------------------------------------------


def _record_intent(deps: CreateDeps, plan: Plan, undo: contextlib.ExitStack) -> None:
    c = plan.container
    deps.records.persist(c)
    undo.callback(deps.records.delete, c.id)
    failpoints.hit("container.after_intent", container_id=c.id)


def _make_dir(deps: CreateDeps, plan: Plan, undo: contextlib.ExitStack) -> None:
    bundle = plan.container.path
    bundle.mkdir(mode=statedirs.PRIVATE_DIR)
    undo.callback(_discard_dir, deps.cleanups, bundle)
    # Nobody else passes through to the rootfs; in a pod user namespace the container's root must
    # (runc mounts the rootfs from inside it): its group, and only it, may.
    statedirs.private_dir(bundle, group=plan.owner[1] if plan.owner else None)


def _discard_dir(cleanups: Cleanups, path: Path) -> None:
    """Remove the dir of a container whose creation failed; if it cannot go now, it is retried later
    (the error being undone is the one the client must see)."""
    cleanups.attempt("container", path.name, lambda: staging.remove_dir(path), "dir")


def _mount_rootfs(plan: Plan, undo: contextlib.ExitStack) -> None:
    c = plan.container
    layers = list(plan.image.layer_dirs)
    rootfs.mount_overlay(layers, c.path, c.rootfs, owner=plan.owner, user_ns=plan.user_ns)
    undo.callback(mounts.unmount, c.rootfs)
    failpoints.hit("container.after_rootfs", container_id=c.id)


def _stage_image_volumes(plan: Plan, undo: contextlib.ExitStack) -> dict[int, str]:
    undo.callback(image_volumes.release, plan.container.path)
    sources = image_volumes.stage(plan.volumes, plan.container.path, plan.user_ns)
    if plan.volumes:
        failpoints.hit("container.after_image_volumes", container_id=plan.container.id)
    return sources


def _build_spec(deps: CreateDeps, plan: Plan, volume_sources: dict[int, str]) -> oci.BuiltSpec:
    c, config, pod = plan.container, plan.config, plan.pod
    built = oci.build(
        oci.SpecInputs(
            container_id=c.id,
            config=config,
            image_config=plan.image.config,
            image_name=plan.image.id,
            pod=pod,
            rootfs=c.rootfs,
            cgroups_path=c.cgroups_path,
            resources=to_oci(config.linux.resources, deps.cgroups.hierarchy, deps.cgroups.pids_limit),
            target_pid_ns=plan.target_pid_ns,
            cgroup_namespace=deps.cgroups.hierarchy.mode is Mode.V2,
            shm_source=str(shm.ensure(deps.run_root, pod.id)) if pod.ipc_ns_path else shm.HOST_SHM,
            image_volume_sources=volume_sources,
            apparmor_profile=plan.apparmor_profile,
            extra_annotations={
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.container-name": c.name,
                "io.kubernetes.cri.sandbox-id": pod.id,
                "io.kubernetes.cri.image-name": config.image.image,
            },
        )
    )
    added = cdi.inject(built.spec, plan.devices)
    if plan.user_ns:
        built.idmap_added(added)
        built.yield_device_binds()
    return built


def _make_dirs(plan: Plan, built: oci.BuiltSpec, held: contextlib.ExitStack) -> None:
    """The dirs the spec names (the builder makes nothing): those of the rootfs go with the container
    dir; the host paths are held until the create ends, and those it made go again if it fails and no
    other create needs them (binds.host_path_ready). Before the idmapped staging, which binds the host
    paths."""
    for path in built.rootfs_dirs:
        make_inside(plan.container.rootfs, path)
    for host_path in built.host_dirs:
        held.enter_context(binds.host_path_ready(host_path))


def _stage_idmapped(plan: Plan, built: oci.BuiltSpec, undo: contextlib.ExitStack) -> None:
    if built.idmapped and plan.user_ns:
        undo.callback(idmapped.release, plan.container.path)
        idmapped.stage(
            built.idmapped,
            plan.container.path,
            plan.user_ns,
            optional=built.idmap_optional,
            origins=built.idmap_origins,
        )
        failpoints.hit("container.after_idmapped", container_id=plan.container.id)


def _prepare_paths(plan: Plan, built: oci.BuiltSpec, undo: contextlib.ExitStack) -> None:
    """What runc needs to find: mount points it must mount onto, a rootfs and sources the container's
    root can reach, the log file (made now, so that one conmon could not open is the request's error)."""
    c, owner = plan.container, plan.owner
    if owner is not None:
        sources = [Path(m["source"]) for m in built.spec["mounts"] if m.get("type") == "bind"]
        container_userns.check_reachable([c.rootfs, *sources], owner)
    if plan.config.linux.security_context.readonly_rootfs or plan.user_ns:
        # Paths runc must mount onto are made now, while the upper dir is still writable to us (and,
        # in a pod user namespace, because the container's root cannot create them in image dirs
        # owned by unmapped host ids).
        for m in built.spec["mounts"]:
            _ensure_mount_point(c.rootfs, m)
    if owner is not None:
        container_userns.give_to_root(c.path / "upper", c.rootfs, owner)
    if c.log_path:
        statedirs.make_log_dir(Path(c.log_path).parent, "the directory of log_path", c.id)
        if statedirs.make_log_file(c.log_path, c.id):
            undo.callback(Path(c.log_path).unlink, missing_ok=True)


def _is_device(path: str) -> bool:
    """A device node (bound at its own mount point in a pod user namespace: cri/containers/devices.py)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _ensure_mount_point(root: Path, mount: dict[str, Any]) -> None:
    source = str(mount.get("source", ""))
    is_file = mount.get("type") == "bind" and (os.path.isfile(source) or _is_device(source))
    with contextlib.suppress(OSError, InvalidArgument):
        make_inside(root, str(mount["destination"]), file=is_file)


def _write_bundle(plan: Plan, built: oci.BuiltSpec) -> None:
    c = plan.container
    files.replace_text(c.path / "config.json", json.dumps(built.spec, indent=1))  # env from Secrets: 0600
    c.uid, c.gid = built.user.uid, built.user.gid
    c.groups = list(built.user.additional_gids)


def _launch(deps: CreateDeps, plan: Plan, undo: contextlib.ExitStack) -> None:
    """conmon starts runc create; the staging mounts go once runc has made the container's own."""
    c, config, monitor = plan.container, plan.config, plan.monitor
    if c.cgroup_parent:
        deps.cgroups.prepare_parent(c.cgroup_parent)
    undo.callback(monitor.forget, c.id)
    undo.callback(wait_monitor_gone, c.id, c.path)
    undo.callback(monitor.delete, c.id)
    launched = monitor.create(
        c.id,
        c.path,
        c.path,
        c.log_path or "/dev/null",
        stdin=config.stdin,
        stdin_once=config.stdin_once,
        tty=config.tty,
    )
    failpoints.hit("container.after_conmon", container_id=c.id)
    # runc has made the container's mounts from the staging ones: its mount namespace keeps them.
    staging.release(c.path)
    c.pid = launched.pid
    c.pid_start = start_time(launched.pid)
    c.conmon_pid = launched.conmon_pid
    c.conmon_start = start_time(launched.conmon_pid)
    undo.callback(deps.cgroups.remove_container, c.id, c.cgroup_parent)
    if launched.conmon_pid > 0:
        deps.cgroups.place_monitor(c.id, c.cgroup_parent, launched.conmon_pid)
