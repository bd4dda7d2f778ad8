"""CreateContainer: record the intent, then rootfs, spec, cgroup parent and conmon, undone on failure.

Every side effect registers its undo on an ExitStack as it succeeds; the stack is dropped only once the
container is recorded as CREATED. A crash in the middle leaves a CREATING record that recovery cleans.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calyx_base import failpoints, files
from calyx_base.errors import FailedPrecondition, InvalidArgument
from cri import enums, statedirs
from cri.api import api_pb2 as pb
from cri.containers import (
    apparmor,
    cdi,
    cgroups_compat,
    idmapped,
    image_volumes,
    rootfs,
    staging,
    validate,
)
from cri.containers import spec as oci
from cri.containers import userns as container_userns
from cri.containers.model import CREATED, CREATING, KIND, RUNNING, Container, encode_config
from cri.containers.monitor import check_log_path, signal_number, wait_monitor_gone
from cri.containers.procinfo import alive, start_time
from cri.containers.users import make_inside
from sandbox import mounts, shm

if TYPE_CHECKING:
    from cri.containers.manager import ContainerManager

log = logging.getLogger("cri.containers.create")


def _log_path(pod: Any, config: pb.ContainerConfig) -> str:
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


def create(manager: ContainerManager, pod_id: str, config: pb.ContainerConfig) -> str:
    start = time.monotonic()
    runtime = manager.runtime
    validate.check(config)
    pods = getattr(runtime, "pods", None)
    if pods is None:
        raise FailedPrecondition("this calyx has no pods subsystem")
    pod = pods.get(pod_id)
    if not pod.ready:
        raise FailedPrecondition(f"pod {pod.id} is not ready", pod.id)
    images = getattr(runtime, "images", None)
    if images is None:
        raise FailedPrecondition("this calyx has no images subsystem")
    image = images.resolve(config.image.image)
    # Refused before anything is made: an image volume kubelet did not pull, an unknown CDI device.
    volumes = image_volumes.resolve(config.mounts, images)
    wanted = cdi.requested([d.name for d in config.CDI_devices], config.annotations)
    devices = manager.cdi.resolve(wanted)

    sc = config.linux.security_context
    target_pid_ns = None
    if sc.namespace_options.pid == pb.TARGET:
        target = manager.get(sc.namespace_options.target_id)
        # The PID must still be the target's own process (start time checked), not a reused one.
        if target.pod_id != pod.id or target.state != RUNNING or not alive(target.pid, target.pid_start):
            raise FailedPrecondition("pid namespace target must be a running container of the same pod")
        target_pid_ns = f"/proc/{target.pid}/ns/pid"

    handler_name = getattr(pod, "runtime_handler", "") or runtime.config.runtime.default_handler
    monitor = manager.monitor(handler_name)
    container_id = secrets.token_hex(32)
    apparmor_profile = apparmor.profile_for(sc, manager.apparmor, container_id)
    name = config.metadata.name
    attempt = config.metadata.attempt
    parent = getattr(pod, "cgroup_parent", "") or ""
    container = Container(
        id=container_id,
        pod_id=pod.id,
        name=name,
        attempt=attempt,
        state=CREATING,
        created_at=time.time_ns(),
        dir=str(manager.containers_dir / container_id),
        handler=handler_name,
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
        cgroups_path=cgroups_compat.cgroups_path(runtime, parent, container_id),
        stop_signal=_stop_signal(config, image.config),
        shared_pid_ns=sc.namespace_options.pid != pb.CONTAINER,
        config_b64=encode_config(config),
        image_volumes=[v.volume.to_record() for v in volumes],
        cdi_devices=[str(d.name) for d in devices],
    )
    container.set_resources(config.linux.resources)
    check_log_path(container.log_path, container_id)

    with manager.reserve_name(pod.id, name, attempt, container_id), contextlib.ExitStack() as undo:
        manager.persist(container)
        undo.callback(manager.store.delete, KIND, container_id)
        failpoints.hit("container.after_intent", container_id=container_id)
        bundle = container.path
        bundle.mkdir(mode=statedirs.PRIVATE_DIR)
        undo.callback(manager.discard_dir, bundle)
        user_ns = container_userns.pod_user_ns(pod)
        owner = container_userns.root_owner(pod)
        # Nobody else passes through to the rootfs; in a pod user namespace the container's root must
        # (runc mounts the rootfs from inside it): its group, and only it, may.
        statedirs.private_dir(bundle, group=owner[1] if owner else None)
        rootfs.mount_overlay(
            list(image.layer_dirs),
            bundle,
            container.rootfs,
            owner=owner,
            user_ns=Path(user_ns) if user_ns else None,
        )
        undo.callback(mounts.unmount, container.rootfs)
        failpoints.hit("container.after_rootfs", container_id=container_id)
        undo.callback(image_volumes.release, bundle)
        volume_sources = image_volumes.stage(volumes, bundle, Path(user_ns) if user_ns else None)
        if volumes:
            failpoints.hit("container.after_image_volumes", container_id=container_id)

        built = oci.build(
            oci.SpecInputs(
                container_id=container_id,
                config=config,
                image_config=image.config,
                image_name=image.id,
                pod=pod,
                rootfs=container.rootfs,
                cgroups_path=container.cgroups_path,
                resources=cgroups_compat.oci_resources(runtime, config.linux.resources),
                target_pid_ns=target_pid_ns,
                cgroup_namespace=_cgroup_v2(runtime),
                shm_source=_shm_source(runtime.config.run_root, pod),
                image_volume_sources=volume_sources,
                apparmor_profile=apparmor_profile,
                extra_annotations={
                    "io.kubernetes.cri.container-type": "container",
                    "io.kubernetes.cri.container-name": name,
                    "io.kubernetes.cri.sandbox-id": pod.id,
                    "io.kubernetes.cri.image-name": config.image.image,
                },
            )
        )
        cdi.inject(built.spec, devices)
        if built.idmapped and user_ns:
            undo.callback(idmapped.release, bundle)
            idmapped.stage(built.idmapped, bundle, Path(user_ns), optional=built.idmap_optional)
            failpoints.hit("container.after_idmapped", container_id=container_id)
        if owner is not None:
            sources = [Path(m["source"]) for m in built.spec["mounts"] if m.get("type") == "bind"]
            container_userns.check_reachable([container.rootfs, *sources], owner)
        if sc.readonly_rootfs or container_userns.pod_user_ns(pod):
            # Paths runc must mount onto are made now, while the upper dir is still writable to us (and,
            # in a pod user namespace, because the container's root cannot create them in image dirs
            # owned by unmapped host ids).
            for m in built.spec["mounts"]:
                _ensure_mount_point(container.rootfs, m)
        if owner is not None:
            container_userns.give_to_root(bundle / "upper", container.rootfs, owner)
        files.replace_text(bundle / "config.json", json.dumps(built.spec, indent=1))  # env from Secrets: 0600
        container.uid, container.gid = built.user.uid, built.user.gid
        container.groups = list(built.user.additional_gids)
        if container.log_path:
            log_dir = Path(container.log_path).parent
            statedirs.make_log_dir(log_dir, "the directory of log_path", container_id)
            if statedirs.make_log_file(container.log_path, container_id):
                undo.callback(Path(container.log_path).unlink, missing_ok=True)
        cgroups_compat.prepare_parent(runtime, parent)

        undo.callback(monitor.forget, container_id)
        undo.callback(wait_monitor_gone, container_id, bundle)
        undo.callback(monitor.delete, container_id)
        launched = monitor.create(
            container_id,
            bundle,
            bundle,
            container.log_path or "/dev/null",
            stdin=config.stdin,
            stdin_once=config.stdin_once,
            tty=config.tty,
        )
        failpoints.hit("container.after_conmon", container_id=container_id)
        # runc has made the container's mounts from the staging ones: its mount namespace keeps them.
        staging.release(bundle)
        container.pid = launched.pid
        container.pid_start = start_time(launched.pid)
        container.conmon_pid = launched.conmon_pid
        container.conmon_start = start_time(launched.conmon_pid)
        undo.callback(cgroups_compat.remove_container, runtime, container_id, parent)
        cgroups_compat.place_monitor(runtime, container_id, parent, launched.conmon_pid)
        container.state = CREATED
        manager.persist(container)
        manager.index(container)
        undo.pop_all()
    log.info(
        "container created",
        extra={
            "container_id": container_id,
            "pod_id": pod.id,
            "container_name": name,
            **({"cdi_devices": ",".join(container.cdi_devices)} if devices else {}),
            **({"image_volumes": len(volumes)} if volumes else {}),
            "duration_ms": (time.monotonic() - start) * 1000,
        },
    )
    return container_id


def _shm_source(run_root: Path, pod: Any) -> str:
    """The host dir to bind on the container's /dev/shm: the pod's own tmpfs (made with its first
    container) when it has an IPC namespace of its own, else the host's."""
    return str(shm.ensure(run_root, pod.id)) if pod.ipc_ns_path else shm.HOST_SHM


def _ensure_mount_point(root: Path, mount: dict[str, Any]) -> None:
    source = str(mount.get("source", ""))
    is_file = mount.get("type") == "bind" and os.path.isfile(source)
    with contextlib.suppress(OSError, InvalidArgument):
        make_inside(root, str(mount["destination"]), file=is_file)


def _cgroup_v2(runtime: Any) -> bool:
    driver = getattr(runtime, "cgroups", None)
    mode = getattr(getattr(driver, "hierarchy", None), "mode", None)
    return getattr(mode, "value", "") == "v2"


def _image_name(requested: str, image: Any) -> str:
    """The name status reports: kubelet asks by image id; like containerd, answer with a repo tag then."""
    bare = requested.removeprefix("sha256:")
    by_id = len(bare) >= 12 and all(ch in "0123456789abcdef" for ch in bare) and image.id.endswith(bare)
    if by_id and image.repo_tags:
        return str(image.repo_tags[0])
    return requested
