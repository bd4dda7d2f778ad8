"""rootfs.is_mounted (statx's mount-root attribute) agrees with the mount table, bind mounts included."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cri.containers import rootfs


def _in_mount_table(path: Path) -> bool:
    wanted = os.path.realpath(path)
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4].encode().decode("unicode_escape") == wanted for line in lines)


def test_is_mounted_agrees_with_mountinfo(tmp_path: Path) -> None:
    plain, tmpfs, bound, source = (tmp_path / n for n in ("plain", "tmp fs", "bound", "source"))
    for d in (plain, tmpfs, bound, source):
        d.mkdir()
    (tmp_path / "link").symlink_to(tmpfs)
    subprocess.run(["mount", "-t", "tmpfs", "cxtest", str(tmpfs)], check=True)
    try:
        subprocess.run(["mount", "--bind", str(source), str(bound)], check=True)  # same filesystem
        try:
            cases = {plain: False, tmpfs: True, bound: True, source: False, tmp_path / "link": True}
            cases[tmp_path / "missing"] = False
            cases[Path("/")] = True
            for path, expected in cases.items():
                assert rootfs.is_mounted(path) is expected, path
                assert _in_mount_table(path) is expected, path
        finally:
            subprocess.run(["umount", str(bound)], check=True)
        assert not rootfs.is_mounted(bound)
    finally:
        subprocess.run(["umount", str(tmpfs)], check=True)
    assert not rootfs.is_mounted(tmpfs)
