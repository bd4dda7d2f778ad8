"""sandbox.trees.remove_tree: any tree a layer or a container can make goes, nothing outside it does.

Real files on the real filesystem, real bind mounts, real immutable flags (chattr) where the
filesystem has them, and a remover without CAP_DAC_OVERRIDE for the read-only directories.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.trees import RemoveFailed, remove_tree

REPO = Path(__file__).resolve().parents[2]


def make_chain(top: Path, depth: int, name: str = "d", mode: int | None = None) -> None:
    """A chain of ``depth`` directories below ``top``, a file and a symlink every 100 levels, made
    through descriptors (its paths are longer than PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            if level % 100 == 0:
                with open(os.open("file", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd), "w") as f:
                    f.write("x")
                os.symlink("/", "root-link", dir_fd=fd)
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            if mode is not None:
                os.fchmod(fd, mode)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A dir outside the trees, that links in them point to: it must keep its file."""
    path = tmp_path / "victim"
    path.mkdir()
    (path / "keep").write_text("keep")
    yield path
    assert (path / "keep").read_text() == "keep"


def test_a_chain_deeper_than_the_stack_and_longer_than_path_max_goes(tmp_path: Path, victim: Path) -> None:
    top = tmp_path / "deep"
    top.mkdir()
    make_chain(top, 5500, mode=0o555)
    os.symlink(victim, top / "to-victim")
    before = open_fds()
    remove_tree(top)
    assert not top.exists()
    assert open_fds() == before
    assert sys.getrecursionlimit() < 5500  # the depth a recursive walk could never reach


def test_wide_trees_links_to_outside_and_odd_entries(tmp_path: Path, victim: Path) -> None:
    top = tmp_path / "wide"
    for i in range(50):
        sub = top / f"dir{i}" / "inner"
        sub.mkdir(parents=True)
        for j in range(20):
            (sub / f"file{j}").write_text("x")
        os.symlink(victim, sub / "victim-dir-link")
        os.symlink(victim / "keep", sub / "victim-file-link")
    os.link(victim / "keep", top / "hard-link-to-victim")
    os.mkfifo(top / "fifo")
    os.mknod(top / "whiteout", 0o020000, os.makedev(0, 0))
    (top / "dir0" / "no-access").mkdir(mode=0)
    remove_tree(top)
    assert not top.exists()


def test_a_symlink_is_removed_itself_and_a_missing_path_is_fine(tmp_path: Path, victim: Path) -> None:
    link = tmp_path / "link"
    os.symlink(victim, link)
    remove_tree(link)
    assert not os.path.lexists(link)
    remove_tree(tmp_path / "never-was")
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "file")
    assert not (tmp_path / "file").exists()


def test_a_mount_inside_stops_the_removal_and_nothing_below_it_is_touched(
    tmp_path: Path, victim: Path
) -> None:
    top = tmp_path / "mounted"
    (top / "a" / "volume").mkdir(parents=True)
    (top / "a" / "sibling").write_text("x")
    subprocess.run(["mount", "--bind", str(victim), str(top / "a" / "volume")], check=True, timeout=30)
    try:
        with pytest.raises(RemoveFailed, match=r"a/volume.*mount point"):
            remove_tree(top)
        assert (top / "a" / "volume" / "keep").read_text() == "keep"
    finally:
        subprocess.run(["umount", str(top / "a" / "volume")], check=True, timeout=30)
    remove_tree(top)
    assert not top.exists()


def test_the_top_itself_mounted_is_refused(tmp_path: Path, victim: Path) -> None:
    top = tmp_path / "top"
    top.mkdir()
    subprocess.run(["mount", "--bind", str(victim), str(top)], check=True, timeout=30)
    try:
        with pytest.raises(RemoveFailed, match="mount point"):
            remove_tree(top)
    finally:
        subprocess.run(["umount", str(top)], check=True, timeout=30)
    remove_tree(top)


def test_an_immutable_file_is_reported_and_left_then_removed_once_it_is_not(tmp_path: Path) -> None:
    top = tmp_path / "imm"
    (top / "sub").mkdir(parents=True)
    (top / "sub" / "locked").write_text("x")
    if subprocess.run(["chattr", "+i", str(top / "sub" / "locked")], capture_output=True).returncode:
        pytest.skip("this filesystem has no immutable flag")
    try:
        with pytest.raises(RemoveFailed, match=r"sub/locked.*immutable"):
            remove_tree(top)
        assert (top / "sub" / "locked").exists()
    finally:
        subprocess.run(["chattr", "-i", str(top / "sub" / "locked")], check=True, timeout=30)
    remove_tree(top)
    assert not top.exists()


def test_read_only_dirs_are_made_writable_by_a_remover_without_dac_override(tmp_path: Path) -> None:
    """Root without CAP_DAC_OVERRIDE is held by modes like anyone: the remover chmods its way."""
    top = tmp_path / "ro"
    top.mkdir()
    make_chain(top, 200, mode=0o555)
    (top / "closed").mkdir()
    (top / "closed" / "inside").write_text("x")
    os.chmod(top / "closed", 0)
    script = f"from sandbox.trees import remove_tree; remove_tree({str(top)!r})"
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    result = subprocess.run(
        [*drop, sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert not top.exists()
