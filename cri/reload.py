"""SIGHUP: take up the config files again without a restart, as CRI-O does.

What can change in a running daemon is applied: the registries (mirrors, insecure, credentials, plain
HTTP on loopback), the pull timeout, the pinned images and the log level, read from the same config
file, drop-ins and command-line overrides as at start. Every other option that changed is named in the
log as needing a restart and left as it runs. A config that does not load (bad TOML, an unknown key, a
wrong value) is logged and the running one kept whole. Values are not logged: registry credentials are
among them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from cri.config import Config, ConfigError

log = logging.getLogger("cri.reload")

# The options a running daemon takes up; each is read where it is used (registry client, image list,
# logging), so replacing it in the live Config is enough.
RELOADABLE = (
    "images.registries",
    "images.loopback_plain_http",
    "images.pull_timeout_seconds",
    "images.pinned",
    "server.log_level",
)


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every option as a dotted name -> value; named tables (registries, handlers) by entry, so an
    entry added or removed shows as its options."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def changed_options(old: Config, new: Config) -> list[str]:
    """The dotted names of the options whose values differ (added or removed entries too)."""
    before, after = _leaves(old), _leaves(new)
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def _reloadable(option: str) -> bool:
    return any(option == r or option.startswith(r + ".") for r in RELOADABLE)


def apply(running: Config, new: Config) -> None:
    """Put the reloadable options of ``new`` into the running config, in place."""
    running.images.registries = new.images.registries
    running.images.loopback_plain_http = new.images.loopback_plain_http
    running.images.pull_timeout_seconds = new.images.pull_timeout_seconds
    running.images.pinned = new.images.pinned
    running.server.log_level = new.server.log_level
    logging.getLogger().setLevel(new.server.log_level.upper())


def reload(running: Config, load: Callable[[], Config]) -> list[str]:
    """Load the config again and apply what can be; returns the options that need a restart."""
    try:
        new = load()
    except ConfigError as exc:
        log.error("config reload failed, the running config is kept", extra={"error": str(exc)})
        return []
    changed = changed_options(running, new)
    applied = [option for option in changed if _reloadable(option)]
    needs_restart = [option for option in changed if not _reloadable(option)]
    apply(running, new)
    log.info(
        "config reloaded",
        extra={"applied": ",".join(applied) or "-", "needs_restart": ",".join(needs_restart) or "-"},
    )
    if needs_restart:
        log.warning(
            "changed options take effect at the next restart", extra={"options": ",".join(needs_restart)}
        )
    return needs_restart
