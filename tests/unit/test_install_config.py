"""deploy/install-config.sh: the installed config may hold registry passwords, so it is root's alone
(calyx.toml and drop-ins 0600, calyx.d 0700), on a fresh install and over an older, open one."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "install-config.sh"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _install(etc: Path) -> None:
    subprocess.run(["bash", str(SCRIPT), str(etc)], check=True, timeout=60)


def test_a_fresh_install_is_root_only(tmp_path: Path) -> None:
    etc = tmp_path / "calyx"
    _install(etc)
    assert _mode(etc / "calyx.toml") == 0o600
    assert _mode(etc / "calyx.d") == 0o700
    assert "[cgroup]" in (etc / "calyx.toml").read_text()


def test_an_open_config_left_by_an_older_install_is_tightened_and_kept(tmp_path: Path) -> None:
    etc = tmp_path / "calyx"
    (etc / "calyx.d").mkdir(parents=True)
    (etc / "calyx.toml").write_text('[images.registries."r.example"]\npassword = "p"\n')
    (etc / "calyx.d" / "10-auth.toml").write_text('[images.registries."s.example"]\npassword = "q"\n')
    for path, mode in ((etc / "calyx.toml", 0o644), (etc / "calyx.d" / "10-auth.toml", 0o644)):
        path.chmod(mode)
    (etc / "calyx.d").chmod(0o755)
    _install(etc)
    assert (_mode(etc / "calyx.toml"), _mode(etc / "calyx.d"), _mode(etc / "calyx.d" / "10-auth.toml")) == (
        0o600,
        0o700,
        0o600,
    )
    assert 'password = "p"' in (etc / "calyx.toml").read_text()  # the operator's config is kept
