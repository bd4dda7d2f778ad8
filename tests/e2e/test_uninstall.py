"""deploy/uninstall.sh, run in a private mount namespace whose /opt, /etc, /var/lib, /usr/local/bin and
/run are fresh tmpfs mounts holding a fake install: the host's own install and services are never seen."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SETUP = """
set -eu
for d in /opt /etc /var/lib /usr/local/bin /run; do mount -t tmpfs calyx-uninstall-test "$d"; done
mkdir -p /opt/calyx/venv /etc/calyx/calyx.d /var/lib/calyx/containers/c1/rootfs
echo '[server]' > /etc/calyx/calyx.toml
mount -t tmpfs calyx-uninstall-rootfs /var/lib/calyx/containers/c1/rootfs
echo precious > /var/lib/calyx/containers/c1/rootfs/data
"""

REPORT = """
echo "rc=$rc"
for p in /opt/calyx /etc/calyx /var/lib/calyx /var/lib/calyx/containers/c1/rootfs/data; do
    [ -e "$p" ] && echo "kept $p" || echo "gone $p"
done
"""


def _run(script: str) -> str:
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_purge_is_refused_while_containers_are_mounted_in_the_state_dir_and_nothing_is_removed() -> None:
    out = _run(SETUP + f"rc=0; bash {REPO}/deploy/uninstall.sh --purge || rc=$?\n" + REPORT)
    assert "rc=1" in out, out
    assert "containers still use it" in out and "/var/lib/calyx/containers/c1/rootfs" in out, out
    for path in ("/opt/calyx", "/etc/calyx", "/var/lib/calyx/containers/c1/rootfs/data"):
        assert f"kept {path}" in out, out


def test_purge_removes_the_install_config_and_state_once_nothing_is_mounted() -> None:
    out = _run(
        SETUP
        + "umount /var/lib/calyx/containers/c1/rootfs\n"
        + f"rc=0; bash {REPO}/deploy/uninstall.sh --purge || rc=$?\n"
        + REPORT
    )
    assert "rc=0" in out and "calyx uninstalled" in out, out
    for path in ("/opt/calyx", "/etc/calyx", "/var/lib/calyx"):
        assert f"gone {path}" in out, out


def test_uninstall_without_purge_keeps_config_and_state() -> None:
    out = _run(SETUP + f"rc=0; bash {REPO}/deploy/uninstall.sh || rc=$?\n" + REPORT)
    assert "rc=0" in out, out
    assert "gone /opt/calyx" in out and "kept /etc/calyx" in out, out
    assert "kept /var/lib/calyx/containers/c1/rootfs/data" in out, out
