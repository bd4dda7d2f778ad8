"""Container records as CRI messages: Container (lists), ContainerStatus (status, events)."""

from __future__ import annotations

import json
from typing import Any

from cri.api import api_pb2 as pb
from cri.containers import idmapped
from cri.containers.model import PB_STATE, Container


def image_spec(c: Container) -> pb.ImageSpec:
    return pb.ImageSpec(
        image=c.image, annotations=c.image_annotations, user_specified_image=c.user_specified_image
    )


def to_container(c: Container) -> pb.Container:
    return pb.Container(
        id=c.id,
        pod_sandbox_id=c.pod_id,
        metadata=pb.ContainerMetadata(name=c.name, attempt=c.attempt),
        image=image_spec(c),
        image_ref=c.image_ref,
        image_id=c.image_id,
        state=PB_STATE[c.state],
        created_at=c.created_at,
        labels=c.labels,
        annotations=c.annotations,
    )


def _stop_signal(name: str) -> int:
    upper = name.upper()
    if not upper.startswith("SIG"):
        upper = "SIG" + upper
    try:
        return int(pb.Signal.Value(upper))
    except ValueError:
        return int(pb.RUNTIME_DEFAULT)


def to_status(c: Container) -> pb.ContainerStatus:
    """The state is read once, first, and the exit shown only with an exited state: an exit being
    recorded meanwhile (model.mark_exited writes its fields, then the state) shows whole or not at all."""
    state = PB_STATE[c.state]
    exited = state == pb.CONTAINER_EXITED
    config = c.config
    return pb.ContainerStatus(
        id=c.id,
        metadata=pb.ContainerMetadata(name=c.name, attempt=c.attempt),
        state=state,
        created_at=c.created_at,
        started_at=c.started_at,
        finished_at=c.finished_at if exited else 0,
        exit_code=c.exit_code if exited else 0,
        image=image_spec(c),
        image_ref=c.image_ref,
        image_id=c.image_id,
        reason=c.reason if exited else "",
        message=c.message if exited else "",
        labels=c.labels,
        annotations=c.annotations,
        mounts=_mounts(c, config),
        log_path=c.log_path,
        resources=pb.ContainerResources(linux=c.resources),
        user=pb.ContainerUser(
            linux=pb.LinuxContainerUser(
                uid=c.uid, gid=c.gid, supplemental_groups=list(dict.fromkeys([c.gid, *c.groups]))
            )
        ),
        stop_signal=_stop_signal(c.stop_signal),  # type: ignore[arg-type]
    )


def _mounts(c: Container, config: pb.ContainerConfig) -> list[pb.Mount]:
    """The CRI mounts; an image volume's carries the ref of the image mounted (a repo digest or id)."""
    mounts = list(config.mounts)
    for record in c.image_volumes:
        index = record.get("index", -1)
        if 0 <= index < len(mounts):
            mount = pb.Mount()
            mount.CopyFrom(mounts[index])
            mount.image.image_ref = str(record.get("image_ref", ""))
            mounts[index] = mount
    return mounts


def verbose_info(c: Container) -> dict[str, str]:
    """``info["info"]``: JSON with the pid, the OCI spec and runtime details, as crictl inspect shows it."""
    spec: Any = None
    try:
        spec = json.loads((c.bundle / "config.json").read_text())
    except (OSError, ValueError):
        spec = None
    staged = idmapped.host_sources(c.bundle)
    if staged and isinstance(spec, dict):
        for mount in spec.get("mounts", []):
            # runc bound an idmapped staging mount, gone since: show the host path it stood for
            mount["source"] = staged.get(mount.get("source"), mount.get("source"))
    info = {
        "sandboxID": c.pod_id,
        "pid": c.pid,
        "monitorPid": c.conmon_pid,
        "runtimeHandler": c.handler,
        "runtimeType": "runc+conmon",
        "runtimeRoot": c.runtime_root,
        "bundle": str(c.bundle),
        "cgroupsPath": c.cgroups_path,
        "runtimeSpec": spec,
    }
    return {"info": json.dumps(info)}
