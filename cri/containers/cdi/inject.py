"""Apply resolved CDI devices to a container's OCI spec: container-level edits of each spec file once,
then each device's own, merged first so that edits that contradict each other are refused whole.

Semantics as the CDI spec and its reference implementation give them: env entries replace the
container's variable of the same name; a device node replaces the container's device at the same path
and gets a cgroup rule (``permissions``, default rwm, ``none`` for no rule), with its type, numbers and
mode filled from the host node when the spec leaves them out; a mount replaces the container's mount at
the same destination and mounts are then ordered parents first; hooks are added to the OCI hook of
their name (runc runs them); additional gids other than 0 join the process's groups.

In a pod with a user namespace of its own, a bind mount's host path is resolved as for any pod and the
mount is then idmapped like the CRI's own mounts (the caller stages what ``inject`` returns through
cri/containers/idmapped.py). runc cannot create device nodes in a user namespace: it binds the host's
node at the device's path, which the container sees with the host's type, numbers, mode and owner; a
node that would not be the one the spec describes, or that no process of the pod could open as the
spec's cgroup rule allows, is refused (FAILED_PRECONDITION naming the device) instead of appearing
and failing with EACCES inside.

Two devices (or a device and a spec's container edits) that give one device path different nodes, one
mount destination different mounts, one variable different values or different intelRdt settings are a
conflict: INVALID_ARGUMENT naming both devices and their spec files.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from calyx_base.errors import FailedPrecondition, InvalidArgument
from cri.containers.binds import real_host_path
from cri.containers.cdi import schema
from cri.containers.cdi.registry import Device
from cri.containers.userns_nodes import PodIds, check_openable


@dataclass
class _Merged:
    env: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (NAME=value, origin)
    nodes: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)  # path -> (device, origin)
    rules: list[dict[str, Any]] = field(default_factory=list)
    mounts: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    hooks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    gids: list[int] = field(default_factory=list)
    intel_rdt: tuple[dict[str, Any], str] | None = None
    seen: set[str] = field(default_factory=set)  # rules, hooks and gids already taken


@dataclass(frozen=True)
class _Target:
    """What of the container being built the edits depend on."""

    user: dict[str, Any]  # the OCI process user: owner of device nodes that name none
    in_user_ns: bool
    ids: PodIds = PodIds()  # the host ids of the pod's user namespace

    @classmethod
    def of(cls, spec: dict[str, Any]) -> _Target:
        linux = spec.get("linux", {})
        return cls(
            user=spec.get("process", {}).get("user", {}),
            in_user_ns=any(ns.get("type") == "user" for ns in linux.get("namespaces", [])),
            ids=PodIds.of_oci(linux.get("uidMappings") or [], linux.get("gidMappings") or []),
        )


def _new(seen: set[str], item: Any) -> bool:
    """Whether ``item`` is seen for the first time (then it is remembered)."""
    key = json.dumps(item, sort_keys=True)
    if key in seen:
        return False
    seen.add(key)
    return True


def inject(spec: dict[str, Any], devices: Sequence[Device]) -> dict[str, tuple[dict[str, Any], str]]:
    """Edit ``spec`` (an OCI runtime spec being built) for ``devices``; nothing is changed on error.
    Returns the OCI mounts added to ``spec`` by destination, each with the device (or spec) it is from."""
    if not devices:
        return {}
    target = _Target.of(spec)
    merged = _Merged()
    seen_files: set[str] = set()
    for device in devices:
        path = str(device.source.path)
        if path not in seen_files:
            seen_files.add(path)
            origin = f"the container edits of CDI spec {path} (for device {device.name})"
            _merge(merged, device.source.spec.edits, origin, target)
        _merge(merged, device.edits, f"CDI device {device.name} ({path})", target)
    _apply(spec, merged)
    return merged.mounts


def _merge(into: _Merged, edits: schema.Edits, origin: str, target: _Target) -> None:
    if edits.net_devices:
        raise FailedPrecondition(
            f"{origin} moves network interfaces (netDevices): the OCI runtime spec Calyx writes for runc has"
            " no linux.netDevices"
        )
    for item in edits.env:
        name = item.partition("=")[0]
        _once(into.env, name, (item, origin), f"environment variable {name}")
    for node in edits.device_nodes:
        device, rule = _device(node, origin, target)
        _once(into.nodes, device["path"], (device, origin), f"device path {device['path']}")
        if rule is not None and _new(into.seen, ("rule", rule)):
            into.rules.append(rule)
    for mount in edits.mounts:
        oci = _mount(mount, origin)
        _once(into.mounts, oci["destination"], (oci, origin), f"mount destination {oci['destination']}")
    for hook in edits.hooks:
        entry: dict[str, Any] = {"path": hook.path}
        if hook.args:
            entry["args"] = list(hook.args)
        if hook.env:
            entry["env"] = list(hook.env)
        if hook.timeout is not None:
            entry["timeout"] = hook.timeout
        if _new(into.seen, ("hook", hook.hook_name, entry)):
            into.hooks.setdefault(hook.hook_name, []).append(entry)
    for gid in edits.additional_gids:
        if gid and _new(into.seen, ("gid", gid)):
            into.gids.append(gid)
    if edits.intel_rdt is not None:
        rdt = _intel_rdt(edits.intel_rdt, origin)
        if into.intel_rdt is not None and into.intel_rdt[0] != rdt:
            raise InvalidArgument(
                f"conflicting CDI edits: {into.intel_rdt[1]} and {origin} set different intelRdt"
            )
        into.intel_rdt = (rdt, origin)


def _once(table: dict[str, Any], key: str, value: tuple[Any, str], what: str) -> None:
    """Record ``value`` under ``key``; the same value again is fine, a different one is a conflict."""
    known = table.get(key)
    if known is None:
        table[key] = value
    elif known[0] != value[0]:
        raise InvalidArgument(
            f"conflicting CDI edits: {known[1]} and {value[1]} give {what} different values"
            f" ({_describe(known[0])} and {_describe(value[0])})"
        )


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:200])
    if "major" in value:
        return f"{value['type']} {value['major']}:{value['minor']} mode {oct(value.get('fileMode') or 0)}"
    return f"{value.get('type')} from {value.get('source')} with {','.join(value.get('options', []))}"


def _device(
    node: schema.DeviceNode, origin: str, target: _Target
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The OCI device and its cgroup rule; type, numbers and mode filled from the host node."""
    host = node.host_path or node.path
    where = f"{origin}: device node {node.path}"
    user = target.user
    if target.in_user_ns and host != node.path:
        raise FailedPrecondition(
            f"{where}: in a pod user namespace runc binds device nodes from the host path equal to their"
            f" container path, and this node comes from {host}"
        )
    kind, major, minor, mode = node.type, node.major, node.minor, node.file_mode
    fully_given = kind != "" and (major != 0 or kind == "p")
    try:
        st = os.lstat(host)
    except OSError as exc:
        if not fully_given:
            raise InvalidArgument(f"{where}: host device {host}: {exc.strerror}") from None
        st = None
    host_kind = _kind_of(st.st_mode) if st is not None else None
    if st is not None and host_kind is None and not fully_given:
        raise InvalidArgument(f"{where}: host path {host} is not a device node")
    if st is not None and host_kind is not None:
        if mode is None:
            mode = stat.S_IMODE(st.st_mode)
        if not fully_given:
            kind = kind or host_kind
            if kind.replace("u", "c") != host_kind:
                raise InvalidArgument(f"{where}: type {kind} but host device {host} is of type {host_kind}")
            if kind != "p" and major == 0:
                major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    device: dict[str, Any] = {"path": node.path, "type": kind, "major": major, "minor": minor}
    if mode is not None:
        device["fileMode"] = mode
    uid = node.uid if node.uid is not None else (user.get("uid") or None)
    gid = node.gid if node.gid is not None else (user.get("gid") or None)
    if uid is not None:
        device["uid"] = uid
    if gid is not None:
        device["gid"] = gid
    if target.in_user_ns:
        _check_bindable(device, st, node.permissions, where, target)
    if kind == "p" or node.permissions == "none":
        return device, None
    rule_type = "c" if kind == "u" else kind
    access = node.permissions or "rwm"
    return device, {"allow": True, "type": rule_type, "major": major, "minor": minor, "access": access}


def _check_bindable(
    device: dict[str, Any], st: os.stat_result | None, permissions: str, where: str, target: _Target
) -> None:
    """In a pod user namespace runc 1.1 binds the host's node at the device's path (it cannot mknod
    there) and ignores the spec's mode and owner: refuse a device the container would get otherwise
    than the spec says, or could not open (cri/containers/userns_nodes.py)."""
    path = device["path"]
    why = "in a pod user namespace runc cannot create device nodes, it binds the host's node"
    if st is None:
        raise FailedPrecondition(f"{where}: {why}, and the host has no {path}")
    host_kind = _kind_of(st.st_mode)
    if host_kind is None:
        raise FailedPrecondition(f"{where}: {why}, and the host's {path} is not a device node")
    host_numbers = (os.major(st.st_rdev), os.minor(st.st_rdev)) if host_kind != "p" else (0, 0)
    wanted_kind = str(device["type"]).replace("u", "c")
    wanted_numbers = (device["major"], device["minor"]) if wanted_kind != "p" else (0, 0)
    if (host_kind, host_numbers) != (wanted_kind, wanted_numbers):
        raise FailedPrecondition(
            f"{where}: {why}, and the host's {path} is {host_kind} {host_numbers[0]}:{host_numbers[1]},"
            f" not the {device['type']} {device['major']}:{device['minor']} the spec describes"
        )
    check_openable(st, permissions, target.ids, where, why)


def _kind_of(mode: int) -> str | None:
    if stat.S_ISCHR(mode):
        return "c"
    if stat.S_ISBLK(mode):
        return "b"
    if stat.S_ISFIFO(mode):
        return "p"
    return None


def _mount(mount: schema.Mount, origin: str) -> dict[str, Any]:
    """The OCI mount; a bind's host path with its symlinks resolved, as for the CRI's mounts."""
    options = list(mount.options)
    mount_type = mount.type
    source = mount.host_path
    if mount_type in ("", "none", "bind") or "bind" in options or "rbind" in options:
        mount_type = "bind"
        if "bind" not in options and "rbind" not in options:
            options.insert(0, "bind")
        real = real_host_path(source)
        if real is None:
            resolved = os.path.realpath(source)
            leads = f" (it leads to {resolved})" if resolved != source else ""
            raise InvalidArgument(
                f"{origin}: mount {mount.container_path}: host path {source} does not exist{leads}"
            )
        source = real
    return {
        "destination": mount.container_path,
        "type": mount_type,
        "source": source,
        "options": options,
    }


def _intel_rdt(rdt: schema.IntelRdt, origin: str) -> dict[str, Any]:
    if rdt.schemata is not None or rdt.enable_monitoring:
        raise FailedPrecondition(
            f"{origin} sets intelRdt schemata or enableMonitoring (CDI 1.1): the OCI runtime spec Calyx"
            " writes for runc has no such fields"
        )
    fields = {"closID": rdt.clos_id, "l3CacheSchema": rdt.l3_cache_schema, "memBwSchema": rdt.mem_bw_schema}
    return {k: v for k, v in fields.items() if v}


def _apply(spec: dict[str, Any], merged: _Merged) -> None:
    process = spec.setdefault("process", {})
    env = list(process.get("env") or [])
    for name, (item, _) in merged.env.items():
        at = next((i for i, e in enumerate(env) if e.partition("=")[0] == name), None)
        if at is None:
            env.append(item)
        else:
            env[at] = item
    process["env"] = env
    linux = spec.setdefault("linux", {})
    devices = [d for d in linux.get("devices") or [] if d.get("path") not in merged.nodes]
    linux["devices"] = devices + [device for device, _ in merged.nodes.values()]
    resources = linux.setdefault("resources", {})
    resources["devices"] = list(resources.get("devices") or []) + merged.rules
    if merged.mounts:
        mounts = [m for m in spec.get("mounts") or [] if m.get("destination") not in merged.mounts]
        mounts += [mount for mount, _ in merged.mounts.values()]
        mounts.sort(key=lambda m: posixpath.normpath(str(m.get("destination", "/"))).count("/"))
        spec["mounts"] = mounts
    for name, hooks in merged.hooks.items():
        spec.setdefault("hooks", {}).setdefault(name, []).extend(hooks)
    if merged.gids:
        user = process.setdefault("user", {})
        gids = list(user.get("additionalGids") or [])
        user["additionalGids"] = gids + [g for g in merged.gids if g not in set(gids)]
    if merged.intel_rdt is not None:
        linux["intelRdt"] = merged.intel_rdt[0]
