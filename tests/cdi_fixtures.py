"""A container test daemon with CDI spec directories of its own (import ``cdx`` into a test module).

``cdx`` is ``cx`` (tests/container_fixtures.py) whose daemon reads CDI specs from two private
directories, ``cdx.cdi_low`` and ``cdx.cdi_high`` (in that precedence order), which tests write spec
files into while the daemon runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.container_fixtures import Cx
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import Net


class CdiCx(Cx):
    cdi_low: Path
    cdi_high: Path


def write_spec(directory: Path, name: str, doc: dict[str, Any] | str) -> Path:
    """Write a spec file atomically (a reader never sees half of it); YAML for a .yaml name."""
    text = (
        doc if isinstance(doc, str) else (yaml.safe_dump(doc) if name.endswith(".yaml") else json.dumps(doc))
    )
    path = directory / name
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(path)
    return path


def make_cdx(
    builtin_net: Callable[..., Net], registry: LoopbackRegistry, base: Path, env: dict[str, str] | None = None
) -> CdiCx:
    low, high = base / "cdi-etc", base / "cdi-run"
    low.mkdir(exist_ok=True)
    high.mkdir(exist_ok=True)
    config = {
        "images": {"registries": {registry.host: {"insecure": True}}},
        "runtime": {"cdi_spec_dirs": [str(low), str(high)]},
    }
    net = builtin_net(env=env, config=config)
    logs = base / "podlogs"
    logs.mkdir(exist_ok=True)
    cx = CdiCx(net, registry, logs)
    cx.cdi_low, cx.cdi_high = low, high
    return cx


@pytest.fixture
def cdx(
    builtin_net: Callable[..., Net], image_registry: LoopbackRegistry, short_tmp: Path
) -> Iterator[CdiCx]:
    cx = make_cdx(builtin_net, image_registry, short_tmp)
    try:
        yield cx
    finally:
        cx.cleanup()
