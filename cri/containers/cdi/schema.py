"""A CDI spec document, checked field by field: the whole file is refused on the first problem.

Spec files are root's configuration but still parsed as untrusted input: unknown fields, wrong types,
relative paths and names outside the CDI grammar are errors (as the CDI spec has loaders refuse unknown
fields), and a spec must declare a ``cdiVersion`` at least as new as the fields it uses.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from cri.containers.cdi import names

# Known spec versions, oldest first. 0.1.0 and 0.2.0 are known but older than the 0.3.0 every spec needs.
VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
NODE_TYPES = ("", "b", "c", "u", "p")
MAX_UINT32 = 2**32 - 1


class SpecError(ValueError):
    """A spec file that cannot be used; the message names the field and the reason."""


@dataclass(frozen=True)
class DeviceNode:
    path: str
    host_path: str = ""
    type: str = ""
    major: int = 0  # 0: not given (filled from the host node, as the CDI spec's loader does)
    minor: int = 0
    file_mode: int | None = None
    permissions: str = ""
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    type: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hook:
    hook_name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True)
class IntelRdt:
    clos_id: str = ""
    l3_cache_schema: str = ""
    mem_bw_schema: str = ""
    schemata: tuple[str, ...] | None = None
    enable_monitoring: bool = False


@dataclass(frozen=True)
class NetDevice:
    host_interface_name: str
    name: str


@dataclass(frozen=True)
class Edits:
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    additional_gids: tuple[int, ...] = ()
    intel_rdt: IntelRdt | None = None
    net_devices: tuple[NetDevice, ...] = ()

    def empty(self) -> bool:
        return self == Edits()


@dataclass(frozen=True)
class Spec:
    version: str
    kind: str
    devices: dict[str, Edits] = field(default_factory=dict)
    edits: Edits = field(default_factory=Edits)


# --- field readers --------------------------------------------------------------------------------------


def _table(
    value: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected an object, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise SpecError(f"{where}: unknown field {str(key)[:100]!r}")
    for key in required:
        if key not in value:
            raise SpecError(f"{where}: {key} is required")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{where}: expected a string, got {type(value).__name__}")
    if "\0" in value:
        raise SpecError(f"{where}: contains a NUL byte")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise SpecError(f"{where}: {value} is out of range {low}..{high}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _strs(value: Any, where: str) -> tuple[str, ...]:
    return tuple(_str(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where)))


def _abs_path(value: Any, where: str) -> str:
    path = _str(value, where)
    if not path.startswith("/"):
        raise SpecError(f"{where}: {path[:200]!r} must be an absolute path")
    if ".." in path.split("/"):
        raise SpecError(f"{where}: {path[:200]!r} must not contain '..'")
    return posixpath.normpath("/" + path.lstrip("/"))


def _env(value: Any, where: str) -> tuple[str, ...]:
    items = _strs(value, where)
    for i, item in enumerate(items):
        if item.find("=") <= 0:
            raise SpecError(f"{where}[{i}]: {item[:200]!r} is not NAME=value")
    return items


def _annotations(value: Any, where: str) -> bool:
    """Check a string-to-string map; whether it has entries (they need cdiVersion 0.6.0)."""
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected an object, got {type(value).__name__}")
    for key, item in value.items():
        _str(key, f"{where} key")
        _str(item, f"{where}.{key}")
    return bool(value)


# --- the document ---------------------------------------------------------------------------------------


def _device_node(value: Any, where: str) -> DeviceNode:
    keys = ("path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid")
    t = _table(value, where, keys, ("path",))
    node_type = _str(t.get("type", ""), f"{where}.type")
    if node_type not in NODE_TYPES:
        raise SpecError(f"{where}.type: {node_type[:20]!r} is not one of b, c, u, p")
    permissions = _str(t.get("permissions", ""), f"{where}.permissions")
    if permissions not in ("", "none") and (set(permissions) - set("rwm") or len(permissions) > 3):
        raise SpecError(f"{where}.permissions: {permissions[:20]!r} is not made of r, w and m")
    return DeviceNode(
        path=_abs_path(t["path"], f"{where}.path"),
        host_path=_abs_path(t["hostPath"], f"{where}.hostPath") if t.get("hostPath") else "",
        type=node_type,
        major=_int(t.get("major", 0), f"{where}.major", 0, MAX_UINT32),
        minor=_int(t.get("minor", 0), f"{where}.minor", 0, MAX_UINT32),
        file_mode=_int(t["fileMode"], f"{where}.fileMode", 0, 0o7777) if "fileMode" in t else None,
        permissions=permissions,
        uid=_int(t["uid"], f"{where}.uid", 0, MAX_UINT32) if "uid" in t else None,
        gid=_int(t["gid"], f"{where}.gid", 0, MAX_UINT32) if "gid" in t else None,
    )


def _mount(value: Any, where: str) -> Mount:
    t = _table(value, where, ("hostPath", "containerPath", "type", "options"), ("hostPath", "containerPath"))
    mount_type = _str(t.get("type", ""), f"{where}.type")
    options = _strs(t.get("options"), f"{where}.options")
    bind = mount_type in ("", "bind", "none") or "bind" in options or "rbind" in options
    host = _str(t["hostPath"], f"{where}.hostPath")
    if not host:
        raise SpecError(f"{where}.hostPath: is empty")
    return Mount(
        host_path=_abs_path(host, f"{where}.hostPath") if bind else host,
        container_path=_abs_path(t["containerPath"], f"{where}.containerPath"),
        type=mount_type,
        options=options,
    )


def _hook(value: Any, where: str) -> Hook:
    t = _table(value, where, ("hookName", "path", "args", "env", "timeout"), ("hookName", "path"))
    hook_name = _str(t["hookName"], f"{where}.hookName")
    if hook_name not in HOOK_NAMES:
        raise SpecError(f"{where}.hookName: {hook_name[:50]!r} is not one of {', '.join(HOOK_NAMES)}")
    timeout = t.get("timeout")
    return Hook(
        hook_name=hook_name,
        path=_abs_path(t["path"], f"{where}.path"),
        args=_strs(t.get("args"), f"{where}.args"),
        env=_env(t.get("env"), f"{where}.env"),
        timeout=None if timeout is None else _int(timeout, f"{where}.timeout", 1, 2**31 - 1),
    )


def _intel_rdt(value: Any, where: str) -> IntelRdt:
    keys = ("closID", "l3CacheSchema", "memBwSchema", "schemata", "enableMonitoring")
    t = _table(value, where, keys)
    clos = _str(t.get("closID", ""), f"{where}.closID")
    if clos != "/" and (clos in (".", "..") or "/" in clos or "\n" in clos or len(clos) >= 4096):
        raise SpecError(f"{where}.closID: {clos[:100]!r} is not a valid class of service name")
    enable = t.get("enableMonitoring", False)
    if not isinstance(enable, bool):
        raise SpecError(f"{where}.enableMonitoring: expected a boolean")
    return IntelRdt(
        clos_id=clos,
        l3_cache_schema=_str(t.get("l3CacheSchema", ""), f"{where}.l3CacheSchema"),
        mem_bw_schema=_str(t.get("memBwSchema", ""), f"{where}.memBwSchema"),
        schemata=_strs(t["schemata"], f"{where}.schemata") if t.get("schemata") is not None else None,
        enable_monitoring=enable,
    )


def _net_device(value: Any, where: str) -> NetDevice:
    t = _table(value, where, ("hostInterfaceName", "name"), ("hostInterfaceName", "name"))
    host, name = _str(t["hostInterfaceName"], f"{where}.hostInterfaceName"), _str(t["name"], f"{where}.name")
    if not host or not name:
        raise SpecError(f"{where}: hostInterfaceName and name must not be empty")
    return NetDevice(host, name)


def _edits(value: Any, where: str) -> Edits:
    if value is None:
        return Edits()
    keys = ("env", "deviceNodes", "mounts", "hooks", "additionalGids", "intelRdt", "netDevices")
    t = _table(value, where, keys)
    nets = tuple(
        _net_device(v, f"{where}.netDevices[{i}]") for i, v in enumerate(_list(t.get("netDevices"), ""))
    )
    if len({n.host_interface_name for n in nets}) != len(nets) or len({n.name for n in nets}) != len(nets):
        raise SpecError(f"{where}.netDevices: an interface is named twice")
    gids = _list(t.get("additionalGids"), f"{where}.additionalGids")
    return Edits(
        env=_env(t.get("env"), f"{where}.env"),
        device_nodes=tuple(
            _device_node(v, f"{where}.deviceNodes[{i}]")
            for i, v in enumerate(_list(t.get("deviceNodes"), f"{where}.deviceNodes"))
        ),
        mounts=tuple(
            _mount(v, f"{where}.mounts[{i}]") for i, v in enumerate(_list(t.get("mounts"), f"{where}.mounts"))
        ),
        hooks=tuple(
            _hook(v, f"{where}.hooks[{i}]") for i, v in enumerate(_list(t.get("hooks"), f"{where}.hooks"))
        ),
        additional_gids=tuple(
            _int(g, f"{where}.additionalGids[{i}]", 0, MAX_UINT32) for i, g in enumerate(gids)
        ),
        intel_rdt=_intel_rdt(t["intelRdt"], f"{where}.intelRdt") if t.get("intelRdt") is not None else None,
        net_devices=nets,
    )


def parse(document: Any) -> Spec:
    """The spec in ``document`` (a decoded JSON or YAML value); SpecError naming the field otherwise."""
    keys = ("cdiVersion", "kind", "annotations", "devices", "containerEdits")
    t = _table(document, "spec", keys, ("cdiVersion", "kind", "devices"))
    version = _str(t["cdiVersion"], "cdiVersion").removeprefix("v")
    if version not in VERSIONS:
        raise SpecError(
            f"cdiVersion: {version[:30]!r} is not a known CDI spec version ({', '.join(VERSIONS)})"
        )
    kind = _str(t["kind"], "kind")
    problem = names.kind_problem(kind)
    if problem:
        raise SpecError(f"kind: {problem}")
    annotated = _annotations(t["annotations"], "annotations") if "annotations" in t else False
    devices: dict[str, Edits] = {}
    for i, raw in enumerate(_list(t["devices"], "devices")):
        where = f"devices[{i}]"
        d = _table(raw, where, ("name", "annotations", "containerEdits"), ("name",))
        name = _str(d["name"], f"{where}.name")
        problem = names.name_problem(name)
        if problem:
            raise SpecError(f"{where}.name: {problem}")
        if name in devices:
            raise SpecError(f"{where}.name: device {name!r} is defined twice")
        if "annotations" in d:
            annotated = _annotations(d["annotations"], f"{where}.annotations") or annotated
        edits = _edits(d.get("containerEdits"), f"{where}.containerEdits")
        if edits.empty():
            raise SpecError(f"{where}: device {name!r} has no containerEdits")
        devices[name] = edits
    if not devices:
        raise SpecError("devices: a spec must define at least one device")
    spec = Spec(version, kind, devices, _edits(t.get("containerEdits"), "containerEdits"))
    needed = required_version(spec, annotated)
    if VERSIONS.index(version) < VERSIONS.index(needed):
        raise SpecError(
            f"cdiVersion: {version} is too old for the fields this spec uses (they need {needed})"
        )
    return spec


def required_version(spec: Spec, annotated: bool) -> str:
    """The oldest cdiVersion that has every field ``spec`` uses (the CDI spec's version table)."""
    every = [spec.edits, *spec.devices.values()]
    if any(e.net_devices for e in every) or any(
        e.intel_rdt and (e.intel_rdt.schemata is not None or e.intel_rdt.enable_monitoring) for e in every
    ):
        return "1.1.0"
    if any(e.intel_rdt is not None or e.additional_gids for e in every):
        return "0.7.0"
    if annotated or "." in spec.kind.partition("/")[2]:
        return "0.6.0"
    if any(n[:1].isdigit() for n in spec.devices) or any(d.host_path for e in every for d in e.device_nodes):
        return "0.5.0"
    if any(m.type for e in every for m in e.mounts):
        return "0.4.0"
    return "0.3.0"
