"""Fixtures shared by every test folder. Subsystem fixtures live in each folder's conftest.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon

# Session-wide fixtures live here, once: imported into several test modules, pytest makes one instance
# per module (a registry holding every test image, a booted systemd) and keeps them all to the end.
from tests.image_fixtures import (  # noqa: F401
    basic_registry,
    image_registry,
    registry_base,
    scratch_registry,
    token_registry,
)
from tests.reaper import reap
from tests.spdystream_client import spdyexec  # noqa: F401
from tests.systemd_fixture import namespaced_systemd  # noqa: F401

if os.geteuid() != 0:
    raise pytest.UsageError("the Calyx test suite runs as root, against the real kernel")


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A short temporary dir (unix socket paths are limited to 107 bytes). Removed with Calyx's own
    remover: a test may leave a tree thousands of levels deep there, and nothing is deleted through a
    mount a failed test left (the leak check reports those)."""
    import contextlib
    import tempfile

    from sandbox.trees import remove_tree

    path = Path(tempfile.mkdtemp(prefix="cx-", dir="/tmp"))
    yield path
    with contextlib.suppress(Exception):
        remove_tree(path)


@pytest.fixture
def proc_below(short_tmp: Path) -> Iterator[Path]:
    """A dir holding a file ``f`` ("x") and a procfs mounted at ``proc`` below it: procfs refuses
    idmapping, so a recursive idmapped clone of the dir fails and a non-recursive one works."""
    import subprocess

    top = short_tmp / "top"
    (top / "proc").mkdir(parents=True)
    (top / "f").write_text("x")
    subprocess.run(["mount", "-t", "proc", "proc", str(top / "proc")], check=True)
    try:
        yield top
    finally:
        subprocess.run(["umount", "-l", str(top / "proc")], check=False)


@pytest.fixture
def daemon_factory(short_tmp: Path) -> Iterator[Callable[..., Daemon]]:
    """Start calyx daemons on private sockets and state dirs; every one is stopped at teardown."""
    started: list[Daemon] = []

    def make(config: dict[str, Any] | None = None, start: bool = True, name: str = "d", **kw: Any) -> Daemon:
        base = short_tmp / f"{name}{len(started)}"
        base.mkdir()
        daemon = Daemon(base, config, **kw)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    leaks: list[str] = []
    for daemon in started:
        daemon.stop()
        leaks += reap(daemon.base)  # what the test's cleanup missed: removed now, reported below
    assert leaks == [], "the test left these on the host (removed now):\n" + "\n".join(leaks)


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """A running calyx with default settings on a private socket."""
    return daemon_factory()
