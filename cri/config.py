"""Calyx configuration: typed sections, loaded from TOML files, drop-ins and command-line overrides.

Every option is a dataclass field with a ``doc``; ``calyx config --defaults`` prints them all with their
docs, and the README's reference table is generated from the same source (cri/configdocs.py).
Unknown keys and wrong types are refused with the file, the key and the reason.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_FILE = Path("/etc/calyx/calyx.toml")
DEFAULT_DROPIN_DIR = Path("/etc/calyx/calyx.d")


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message names the source, the key and why."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


def opt(default: Any, doc: str) -> Any:
    """A documented option with an immutable default."""
    return field(default=default, metadata={"doc": doc})


def opt_factory(factory: Any, doc: str) -> Any:
    """A documented option whose default is built by ``factory`` (lists, dicts)."""
    return field(default_factory=factory, metadata={"doc": doc})


@dataclass
class ServerConfig:
    socket: str = opt("/run/calyx/calyx.sock", "Unix socket the CRI services listen on.")
    socket_mode: str = opt("0660", "File mode of the socket, octal.")
    log_level: str = opt("info", "Log level: debug, info, warning or error.")
    workers: int = opt(64, "Threads serving gRPC calls (each streaming call holds one).")
    shutdown_grace_seconds: float = opt(10.0, "How long SIGTERM waits for calls in flight.")


@dataclass
class StateConfig:
    root: str = opt("/var/lib/calyx", "Persistent state: metadata store, image content, container dirs.")
    run_root: str = opt("/run/calyx", "Volatile state: pinned namespaces, runc root, monitor sockets.")
    cleanup_retry_seconds: float = opt(
        60.0,
        "How often a cleanup that failed (a leftover recovery or garbage collection could not remove) is"
        " tried again; each failure is logged and counted in calyx_recovery_failures_total.",
    )


@dataclass
class CgroupConfig:
    driver: str = opt("cgroupfs", "cgroup driver, the same as kubelet's cgroupDriver: systemd or cgroupfs.")
    default_parent: str = opt(
        "", "Parent of pods that name none; empty: system.slice (systemd) or /calyx (cgroupfs)."
    )
    pids_limit: int = opt(0, "Process limit (pids.max) of every container; 0: no limit.")


@dataclass
class RuntimeHandler:
    runtime_path: str = opt("runc", "OCI runtime binary (name in PATH or absolute path).")
    runtime_root: str = opt("", "Root dir of the OCI runtime's state; empty: <run_root>/<handler>.")


def _default_handlers() -> dict[str, RuntimeHandler]:
    return {"runc": RuntimeHandler()}


@dataclass
class RuntimeConfig:
    default_handler: str = opt("runc", "Runtime handler used when a pod names none.")
    handlers: dict[str, RuntimeHandler] = opt_factory(_default_handlers, "Runtime handlers by name.")
    conmon_path: str = opt("conmon", "Container monitor binary.")
    cdi_spec_dirs: list[str] = opt_factory(
        lambda: ["/etc/cdi", "/var/run/cdi"],
        "CDI spec directories (JSON and YAML device specs), in increasing precedence: a device defined in a"
        " later one replaces an earlier one's. Re-read when they change. Empty: CDI devices are refused.",
    )


@dataclass
class NetworkConfig:
    cni_conf_dir: str = opt("/etc/cni/net.d", "Directory of CNI network configs (first conflist is used).")
    cni_bin_dirs: list[str] = opt_factory(
        lambda: ["/opt/cni/bin", "/usr/lib/cni"], "Directories searched for CNI plugins, in order."
    )
    bridge: str = opt("calyx0", "Bridge of the built-in network (used when no CNI config exists).")
    subnet: str = opt("10.88.0.0/16", "IPv4 subnet of the built-in network, unless kubelet sets a pod CIDR.")
    subnet_v6: str = opt(
        "",
        "IPv6 subnet of the built-in network (e.g. fd00:10:88::/64): when set, every pod also gets an IPv6"
        " address (dual-stack; PodSandboxStatus lists the IPv4 one first). Empty: IPv4 only. Unused when"
        " kubelet sets a pod CIDR: its parts (one per family, in its order, IPv6 alone too) decide.",
    )
    cni_plugin_timeout_seconds: float = opt(
        240.0,
        "How long one CNI plugin call (ADD, CHECK, DEL) may run before it and its children are killed and"
        " the call fails. The default is the 4 minutes kubelet allows RunPodSandbox (twice its"
        " --runtime-request-timeout), the bound containerd and CRI-O plugins run under.",
    )

    def validate(self) -> None:
        """The bridge must be a valid interface name, the subnets IPv4 and IPv6 networks with room for pods;
        a plugin timeout must be a positive number of seconds."""
        if not 0 < self.cni_plugin_timeout_seconds < float("inf"):
            raise ConfigError(
                "config",
                "network.cni_plugin_timeout_seconds",
                f"{self.cni_plugin_timeout_seconds!r} must be a positive number of seconds",
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", self.bridge):
            raise ConfigError(
                "config", "network.bridge", f"{self.bridge!r} is not an interface name (1-15 of A-Za-z0-9_.-)"
            )
        try:
            subnet = ipaddress.ip_network(self.subnet, strict=False)
        except ValueError:
            raise ConfigError("config", "network.subnet", f"{self.subnet!r} is not a network") from None
        if subnet.version != 4 or subnet.prefixlen > 30:
            raise ConfigError(
                "config", "network.subnet", f"{self.subnet!r} must be an IPv4 network of /30 or larger"
            )
        if self.subnet_v6:
            try:
                subnet6 = ipaddress.ip_network(self.subnet_v6, strict=False)
            except ValueError:
                raise ConfigError(
                    "config", "network.subnet_v6", f"{self.subnet_v6!r} is not a network"
                ) from None
            if subnet6.version != 6 or subnet6.prefixlen > 126:
                raise ConfigError(
                    "config",
                    "network.subnet_v6",
                    f"{self.subnet_v6!r} must be an IPv6 network of /126 or larger",
                )


@dataclass
class Registry:
    mirrors: list[str] = opt_factory(
        list,
        "Mirror endpoints tried in order before the registry itself: host[:port][/path prefix] (HTTPS unless"
        " that host is insecure) or a full http(s):// URL. The repository path is kept: a mirror of"
        " registry.k8s.io serves registry.k8s.io/pause as <mirror>/pause.",
    )
    insecure: bool = opt(False, "Speak plain HTTP to this registry.")
    username: str = opt("", "User name for basic or token auth.")
    password: str = opt("", "Password for basic or token auth.")


@dataclass
class ImagesConfig:
    registries: dict[str, Registry] = opt_factory(dict, "Per-registry settings, keyed by host[:port].")
    pinned: list[str] = opt_factory(list, "Images kubelet's image GC must never remove.")
    max_layer_unpacked_bytes: int = opt(
        16 * 1024**3,
        "Most bytes one layer may unpack to: what its tar stream decompresses to, sparse files at their"
        " full size. A layer over it is refused (RESOURCE_EXHAUSTED naming the layer and this cap) before"
        " it can fill the disk; decompression bombs and sparse-file bombs stop here. The default, 16 GiB,"
        " leaves room for the largest real layers (machine-learning images carry layers over 10 GiB).",
    )
    loopback_plain_http: bool = opt(
        True,
        "Speak plain HTTP to a registry on loopback (localhost, 127.0.0.0/8, ::1) even when it is not"
        " marked insecure, as containerd and Docker do; false: HTTPS to every registry not marked insecure.",
    )
    pull_timeout_seconds: float = opt(
        1800.0,
        "How long one PullImage may take when the client gives no deadline (kubelet gives none): past it"
        " the pull fails with DEADLINE_EXCEEDED and leaves nothing behind. A client's deadline is used as"
        " is. Bodies trickled a byte at a time are cut at the deadline too.",
    )

    def validate(self) -> None:
        """A pull timeout must be a positive number of seconds; mirrors host[:port][/prefix] or http(s)
        URLs."""
        if not 0 < self.pull_timeout_seconds < float("inf"):
            raise ConfigError(
                "config",
                "images.pull_timeout_seconds",
                f"{self.pull_timeout_seconds!r} must be a positive number of seconds",
            )
        for name, registry in self.registries.items():
            for mirror in registry.mirrors:
                scheme = mirror.partition("://")[0] if "://" in mirror else "https"
                if scheme not in ("http", "https") or not mirror.split("://")[-1].strip("/"):
                    raise ConfigError(
                        "config",
                        f"images.registries.{name}.mirrors",
                        f"{mirror!r} is not host[:port][/prefix] or an http(s) URL",
                    )


@dataclass
class StreamingConfig:
    address: str = opt("127.0.0.1", "Address of the exec/attach/port-forward server.")
    port: int = opt(0, "Port of the streaming server; 0 picks a free one at start.")
    tls_cert: str = opt("", "PEM certificate; with tls_key, the streaming server speaks HTTPS.")
    tls_key: str = opt("", "PEM private key of tls_cert.")
    token_ttl_seconds: float = opt(60.0, "How long a streaming URL may wait to be used.")
    idle_timeout_seconds: float = opt(4 * 3600.0, "Idle streaming connections are closed after this.")
    stream_creation_timeout_seconds: float = opt(
        30.0, "How long a SPDY client may take to open its streams after the upgrade."
    )
    max_sessions: int = opt(
        256,
        "Exec, attach and port-forward sessions served at once; a URL used past this is answered 503 "
        "and stays valid until its TTL.",
    )


@dataclass
class MetricsConfig:
    enabled: bool = opt(True, "Serve Prometheus metrics.")
    address: str = opt("127.0.0.1", "Address of the /metrics endpoint.")
    port: int = opt(9099, "Port of the /metrics endpoint.")
    fs_usage_cache_seconds: float = opt(
        10.0, "How long a container's writable-layer usage (a directory walk) is reused by stats."
    )


@dataclass
class Config:
    server: ServerConfig = opt_factory(ServerConfig, "The CRI gRPC server.")
    state: StateConfig = opt_factory(StateConfig, "Where state is kept.")
    cgroup: CgroupConfig = opt_factory(CgroupConfig, "cgroups.")
    runtime: RuntimeConfig = opt_factory(RuntimeConfig, "OCI runtime and monitor.")
    network: NetworkConfig = opt_factory(NetworkConfig, "Pod networking.")
    images: ImagesConfig = opt_factory(ImagesConfig, "Image pulls and storage.")
    streaming: StreamingConfig = opt_factory(StreamingConfig, "Exec, attach and port-forward.")
    metrics: MetricsConfig = opt_factory(MetricsConfig, "Prometheus exporter.")

    def validate(self) -> None:
        """Checks that span several options; raise ConfigError naming the option."""
        if self.cgroup.driver not in ("systemd", "cgroupfs"):
            raise ConfigError(
                "config", "cgroup.driver", f"must be systemd or cgroupfs, not {self.cgroup.driver!r}"
            )
        if self.server.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("config", "server.log_level", f"unknown level {self.server.log_level!r}")
        try:
            int(self.server.socket_mode, 8)
        except ValueError:
            raise ConfigError("config", "server.socket_mode", "must be an octal mode such as 0660") from None
        if self.runtime.default_handler not in self.runtime.handlers:
            raise ConfigError(
                "config",
                "runtime.default_handler",
                f"{self.runtime.default_handler!r} is not in runtime.handlers",
            )
        for i, directory in enumerate(self.runtime.cdi_spec_dirs):
            if not directory.startswith("/"):
                raise ConfigError("config", f"runtime.cdi_spec_dirs[{i}]", f"{directory!r} must be absolute")
        self.network.validate()
        if self.images.max_layer_unpacked_bytes <= 0:
            raise ConfigError(
                "config", "images.max_layer_unpacked_bytes", "must be a positive number of bytes"
            )
        if not 0 < self.state.cleanup_retry_seconds < float("inf"):
            raise ConfigError("config", "state.cleanup_retry_seconds", "must be a positive number of seconds")
        if self.streaming.max_sessions <= 0:
            raise ConfigError("config", "streaming.max_sessions", "must be a positive number of sessions")
        self.images.validate()

    @property
    def root(self) -> Path:
        return Path(self.state.root)

    @property
    def run_root(self) -> Path:
        return Path(self.state.run_root)


# --- loading -------------------------------------------------------------------------------------------


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check(value: Any, hint: Any, source: str, key: str) -> Any:
    """Return ``value`` converted to ``hint`` or raise ConfigError."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a table, got {type(value).__name__}")
        return _build(hint, value, source, key)  # type: ignore[arg-type]
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(source, key, f"expected a list, got {type(value).__name__}")
        return [_check(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a table, got {type(value).__name__}")
        return {str(k): _check(v, item, source, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (str, int, bool, float):
        if type(value) is not hint:
            raise ConfigError(source, key, f"expected {hint.__name__}, got {type(value).__name__} {value!r}")
        return value
    if isinstance(hint, types.UnionType):
        raise ConfigError(source, key, "unsupported option type")
    raise ConfigError(source, key, f"unsupported option type {hint!r}")


def _build(cls: type, table: dict[str, Any], source: str, prefix: str) -> Any:
    return _merge(cls(), table, source, prefix)


def _merge(obj: Any, table: dict[str, Any], source: str, prefix: str) -> Any:
    """Apply ``table`` onto dataclass instance ``obj`` (in place) and return it."""
    hints = field_types(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(source, path, "unknown option")
        hint = hints[key]
        current = getattr(obj, key)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            _merge(current, value, source, path)
        elif typing.get_origin(hint) is dict and isinstance(value, dict):
            _, item = typing.get_args(hint)
            merged = dict(current)
            for name, sub in value.items():
                sub_path = f"{path}.{name}"
                if dataclasses.is_dataclass(item) and name in merged and isinstance(sub, dict):
                    merged[name] = _merge(dataclasses.replace(merged[name]), sub, source, sub_path)
                else:
                    merged[name] = _check(sub, item, source, sub_path)
            setattr(obj, key, merged)
        else:
            setattr(obj, key, _check(value, hint, source, path))
    return obj


def _parse_override(text: str) -> dict[str, Any]:
    """``section.key=value`` from the command line as a nested table.

    The value is read as TOML (a bare word is taken as a string); keys may be quoted as in TOML:
    ``images.registries."host:5000".insecure=true``.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "expected section.key=value")
    for candidate in (raw, json.dumps(raw)):
        try:
            return tomllib.loads(f"{key.strip()} = {candidate}")
        except tomllib.TOMLDecodeError:
            continue
    raise ConfigError("--set", key, "cannot be read as a TOML key")


def load(
    config_file: Path | None = DEFAULT_CONFIG_FILE,
    dropin_dir: Path | None = DEFAULT_DROPIN_DIR,
    overrides: list[str] | None = None,
    require_file: bool = False,
) -> Config:
    """The effective config: defaults, then the file, then drop-ins in name order, then overrides."""
    config = Config()
    sources: list[Path] = []
    if config_file is not None:
        if config_file.exists():
            sources.append(config_file)
        elif require_file:
            raise ConfigError(str(config_file), "-", "file not found")
    if dropin_dir is not None and dropin_dir.is_dir():
        sources.extend(sorted(dropin_dir.glob("*.toml")))
    for path in sources:
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), "-", f"not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(str(path), "-", f"cannot read: {exc.strerror}") from None
        _merge(config, table, str(path), "")
    for text in overrides or []:
        _merge(config, _parse_override(text), "--set", "")
    config.validate()
    return config
