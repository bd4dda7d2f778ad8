"""Running one CNI plugin: environment, stdin config, result or error, as the CNI spec defines them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calyx_base import proc
from calyx_base.errors import DeadlineExceeded, Internal


class PluginError(Internal):
    """A CNI plugin failed; the message carries the plugin's own ``msg`` and ``details``."""


class PluginTimeout(PluginError):
    """A CNI plugin ran past network.cni_plugin_timeout_seconds and was killed with its children."""


def find_plugin(plugin_type: str, bin_dirs: Sequence[str]) -> Path | None:
    for directory in bin_dirs:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def plugin_stdin(
    plugin: dict[str, Any],
    name: str,
    cni_version: str,
    prev_result: dict[str, Any] | None,
    capability_args: dict[str, Any],
) -> bytes:
    """The config one plugin reads: its own section plus name, version, prevResult, runtimeConfig."""
    conf = {k: v for k, v in plugin.items() if k != "capabilities"}
    conf["name"] = name
    conf["cniVersion"] = cni_version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    capabilities = plugin.get("capabilities") or {}
    runtime_config = {k: v for k, v in capability_args.items() if capabilities.get(k)}
    if runtime_config:
        conf["runtimeConfig"] = runtime_config
    if "capabilities" in plugin:
        conf["capabilities"] = capabilities
    return json.dumps(conf).encode()


def run_plugin(
    command: str,
    plugin: dict[str, Any],
    *,
    name: str,
    cni_version: str,
    bin_dirs: Sequence[str],
    container_id: str,
    netns: str,
    ifname: str,
    cni_args: str,
    prev_result: dict[str, Any] | None,
    capability_args: dict[str, Any],
    timeout_s: float,
    pod_label: str = "",
) -> dict[str, Any] | None:
    """Run ``command`` (ADD, DEL, CHECK) of one plugin; its JSON result for ADD, else None.

    A plugin still running after ``timeout_s`` is killed with every process it started (a hung plugin
    must not keep the pod's netns busy or hold addresses), and the call fails naming plugin and pod.
    """
    plugin_type = plugin["type"]
    binary = find_plugin(plugin_type, bin_dirs)
    if binary is None:
        raise PluginError(
            f"CNI plugin {plugin_type!r} of network {name!r} not found in {', '.join(bin_dirs)}", container_id
        )
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": cni_args,
        "CNI_PATH": os.pathsep.join(bin_dirs),
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    }
    stdin = plugin_stdin(plugin, name, cni_version, prev_result, capability_args)
    try:
        result = proc.run(
            [str(binary)],
            timeout_s,
            input=stdin,
            env=env,
            check=False,
            object_id=container_id,
            kill_tree=True,
        )
    except DeadlineExceeded:
        raise PluginTimeout(
            f"CNI plugin {plugin_type} {command} on network {name!r} for pod {pod_label or container_id} "
            f"did not finish within {timeout_s:g}s (network.cni_plugin_timeout_seconds); it was killed",
            container_id,
        ) from None
    if result.returncode != 0:
        raise PluginError(
            _error_message(command, plugin_type, name, result.returncode, result.stdout, result.stderr),
            container_id,
        )
    if command != "ADD":
        return None
    try:
        parsed = json.loads(result.stdout or b"{}")
    except json.JSONDecodeError:
        raise PluginError(
            f"CNI plugin {plugin_type} {command} on network {name!r} printed no JSON result: "
            f"{result.stdout[:500]!r}",
            container_id,
        ) from None
    if not isinstance(parsed, dict):
        raise PluginError(f"CNI plugin {plugin_type} {command} returned {parsed!r}", container_id)
    return parsed


def _error_message(
    command: str, plugin_type: str, network: str, code: int, stdout: bytes, stderr: bytes
) -> str:
    """The plugin's error as the spec defines it (JSON with msg/details on stdout), else its output."""
    text = f"CNI plugin {plugin_type} {command} on network {network!r} failed (exit {code})"
    try:
        error = json.loads(stdout) if stdout.strip() else None
    except json.JSONDecodeError:
        error = None
    if isinstance(error, dict) and (error.get("msg") or error.get("details")):
        msg = str(error.get("msg", ""))
        if error.get("details"):
            msg += f": {error['details']}"
        return f"{text}: {msg}"
    other = (stderr or stdout).decode(errors="replace").strip()[-2000:]
    return f"{text}: {other or 'no message'}"
