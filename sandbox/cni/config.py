"""CNI network configuration: the first config file of the conf dir, by name, as a plugin list.

A ``.conflist`` is used as is; a single-plugin ``.conf``/``.json`` becomes a list of one plugin. The
loaded list is kept in each pod's record so that DEL runs against the config the pod was added with,
even when the file has changed or disappeared since (and after a daemon restart).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_VERSIONS = ("1.0.0", "0.4.0", "0.3.1", "0.3.0")
CONFIG_SUFFIXES = (".conflist", ".conf", ".json")


class ConfigError(ValueError):
    """A CNI config file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class NetworkList:
    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    source: str
    raw: dict[str, Any]

    @property
    def supports_check(self) -> bool:
        return self.cni_version in ("1.0.0", "0.4.0")

    def to_record(self) -> dict[str, Any]:
        return {"source": self.source, "raw": self.raw}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> NetworkList:
        return from_dict(record["raw"], record.get("source", "(cached)"))


def find_config(conf_dir: Path) -> Path | None:
    """The first config file of ``conf_dir`` by name, or None."""
    try:
        candidates = sorted(p for p in conf_dir.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
    except OSError:
        return None
    return candidates[0] if candidates else None


def from_dict(raw: dict[str, Any], source: str) -> NetworkList:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: not a JSON object")
    version = raw.get("cniVersion", "")
    if version not in SUPPORTED_VERSIONS:
        raise ConfigError(
            f"{source}: cniVersion {version!r} is not supported ({', '.join(SUPPORTED_VERSIONS)})"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: the network has no name")
    if "plugins" in raw:
        plugins = raw["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise ConfigError(f"{source}: 'plugins' must be a non-empty list")
    elif "type" in raw:
        plugins = [{k: v for k, v in raw.items() if k not in ("cniVersion", "name")}]
    else:
        raise ConfigError(f"{source}: neither 'plugins' nor 'type'")
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str) or not plugin["type"]:
            raise ConfigError(f"{source}: plugin {index} has no type")
        if "/" in plugin["type"]:
            raise ConfigError(f"{source}: plugin type {plugin['type']!r} must be a plain name")
    return NetworkList(name=name, cni_version=version, plugins=plugins, source=source, raw=raw)


def load(path: Path) -> NetworkList:
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    return from_dict(raw, str(path))
