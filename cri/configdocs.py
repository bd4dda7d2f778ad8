"""The configuration as text: TOML of a config (secrets redacted where it leaves the host), the defaults
with each option's doc (``calyx config --defaults``), and README's reference table, all from the
options' own ``doc`` metadata (cri/config.py)."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import tomli_w

from cri.config import Config, field_types


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


REDACTED = "(redacted)"
# Option names whose values are secrets (a registry's password, and any token or secret added later).
_SECRET = re.compile(r"(password|passwd|secret|token|auth)$", re.IGNORECASE)


def redacted(value: Any) -> Any:
    """``value`` (a config as to_dict gives it) with every secret replaced by REDACTED, for output that
    leaves the host's root: Status(verbose) goes to anyone who can reach the socket, and into logs."""
    if isinstance(value, dict):
        return {
            k: REDACTED if _SECRET.search(str(k)) and isinstance(v, str) and v else redacted(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def to_toml(config: Config, show_secrets: bool = True) -> str:
    values = to_dict(config)
    return tomli_w.dumps(values if show_secrets else redacted(values))


def _inline(value: Any) -> str:
    """One TOML value on one line."""
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).strip()[4:]


def iter_options(cls: type = Config, prefix: str = "") -> typing.Iterator[tuple[str, Any, str]]:
    """Every leaf option as (dotted key, default, doc); for a table of named entries (such as
    runtime.handlers) the table itself and then its entries' options under ``<name>``."""
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        doc = f.metadata.get("doc", "")
        if dataclasses.is_dataclass(hint):
            yield from iter_options(hint, f"{key}.")  # type: ignore[arg-type]
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        yield key, default, doc
        if typing.get_origin(hint) is dict:
            item = typing.get_args(hint)[1]
            if dataclasses.is_dataclass(item):
                yield from iter_options(item, f"{key}.<name>.")  # type: ignore[arg-type]


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(sorted(value)) or "(none)"
    return _inline(value)


def reference_table() -> str:
    """The config reference as a Markdown table (README.md embeds it)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for key, default, doc in iter_options():
        rows.append(f"| `{key}` | `{_shown(default)}` | {doc} |")
    return "\n".join(rows)


def defaults_toml() -> str:
    """The default config as TOML, each option's doc as a comment above it."""
    lines: list[str] = []
    tables: list[str] = []
    current = ""
    for key, default, doc in iter_options():
        if "<name>" in key:
            continue
        section, _, name = key.rpartition(".")
        if section != current:
            lines.append(f"\n[{section}]")
            current = section
        lines.append(f"# {doc}")
        if isinstance(default, dict):
            lines.append(f"# {name}: see [{key}.<name>] tables" + ("" if default else " (none by default)"))
            for entry, value in default.items():
                tables.append(f"\n[{key}.{entry}]")
                tables.extend(f"{k} = {_inline(v)}" for k, v in dataclasses.asdict(value).items())
        else:
            lines.append(f"{name} = {_inline(default)}")
    return "\n".join(lines + tables).lstrip() + "\n"
