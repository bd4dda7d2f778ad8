"""cri/reload.py: which options a reload sees as changed, which it applies, and that a bad config
changes nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cri import config as config_mod
from cri import reload


def load(path: Path) -> config_mod.Config:
    return config_mod.load(path, None)


def test_changed_options_name_entries_of_named_tables(tmp_path: Path) -> None:
    before = config_mod.Config()
    after = config_mod.Config()
    after.images.registries = {"r.example": config_mod.Registry(mirrors=["m.example"], password="pw")}
    after.images.pinned = ["busybox"]
    after.network.bridge = "other0"
    assert reload.changed_options(before, after) == [
        "images.pinned",
        "images.registries.r.example.insecure",
        "images.registries.r.example.mirrors",
        "images.registries.r.example.password",
        "images.registries.r.example.username",
        "network.bridge",
    ]
    assert reload.changed_options(after, after) == []


def test_reload_applies_what_it_can_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "calyx.toml"
    path.write_text('[server]\nlog_level = "info"\n[network]\nbridge = "calyx0"\n')
    running = load(path)
    path.write_text(
        '[server]\nlog_level = "debug"\n[network]\nbridge = "other0"\n'
        '[images]\npinned = ["a"]\nloopback_plain_http = false\npull_timeout_seconds = 60.0\n'
    )
    root = logging.getLogger()
    level = root.level
    try:
        assert reload.reload(running, lambda: load(path)) == ["network.bridge"]
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(level)
    assert (running.server.log_level, running.images.pinned) == ("debug", ["a"])
    assert (running.images.loopback_plain_http, running.images.pull_timeout_seconds) == (False, 60.0)
    assert running.network.bridge == "calyx0"


@pytest.mark.parametrize(
    "text", ['[images]\npinned = ["x', "[images]\npinnd = []\n", '[server]\nlog_level = "loud"\n']
)
def test_a_config_that_does_not_load_changes_nothing(tmp_path: Path, text: str) -> None:
    path = tmp_path / "calyx.toml"
    path.write_text('[images]\npinned = ["kept"]\n')
    running = load(path)
    path.write_text(text)
    assert reload.reload(running, lambda: load(path)) == []
    assert running == load_kept(tmp_path)


def load_kept(tmp_path: Path) -> config_mod.Config:
    kept = tmp_path / "kept.toml"
    kept.write_text('[images]\npinned = ["kept"]\n')
    return load(kept)
