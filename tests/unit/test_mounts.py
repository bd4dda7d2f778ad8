"""sandbox/mounts.py: is_mounted (statx's mount-root attribute) agrees with the mount table, bind mounts
included; the mount table parser reads what the kernel writes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sandbox import mounts


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
                assert mounts.is_mounted(path) is expected, path
                assert _in_mount_table(path) is expected, path
        finally:
            subprocess.run(["umount", str(bound)], check=True)
        assert not mounts.is_mounted(bound)
    finally:
        subprocess.run(["umount", str(tmpfs)], check=True)
    assert not mounts.is_mounted(tmpfs)


def test_mountinfo_lines_are_parsed_with_escapes_and_propagation() -> None:
    text = (
        "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue\n"
        "40 25 0:35 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
    )
    first, second = mounts.mountinfo(text)
    assert first.mount_point == "/mnt/a b" and first.root == "/mnt1" and first.fstype == "ext3"
    assert first.shared and first.slave and "errors=continue" in first.super_options
    assert second.fstype == "cgroup" and "memory" in second.super_options and not second.shared
