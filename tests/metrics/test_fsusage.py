"""Writable-layer usage: bytes and inodes of a real directory tree."""

from __future__ import annotations

import os

from metrics.fsusage import FsUsageCache, dir_usage

MiB = 1024 * 1024


def test_counts_allocated_bytes_and_inodes_once(tmp_path):
    root = tmp_path / "upper"
    root.mkdir()
    empty = dir_usage(str(root))
    assert empty.inodes_used == 1
    (root / "a").mkdir()
    (root / "a" / "big").write_bytes(os.urandom(4 * MiB))
    (root / "small").write_bytes(b"x")
    os.link(root / "small", root / "a" / "small-link")  # one inode, two names
    os.symlink("small", root / "sym")
    (root / "sparse").touch()
    with open(root / "sparse", "r+b") as f:
        f.truncate(100 * MiB)  # a hole costs no blocks
    usage = dir_usage(str(root))
    assert usage.inodes_used == 1 + 5  # root, a, big, small(+link), sym, sparse
    assert 4 * MiB <= usage.used_bytes - empty.used_bytes <= 4 * MiB + 256 * 1024


def test_cache_serves_a_recent_walk_and_forgets_removed_dirs(tmp_path):
    cache = FsUsageCache(ttl_seconds=3600)
    first = cache.get(str(tmp_path))
    (tmp_path / "f").write_bytes(os.urandom(MiB))
    assert cache.get(str(tmp_path)) is first
    cache.forget(set())
    again = cache.get(str(tmp_path))
    assert again.used_bytes >= first.used_bytes + MiB
    assert FsUsageCache(ttl_seconds=0).get(str(tmp_path)).inodes_used == 2


def test_a_tree_deeper_than_path_max_is_counted_and_a_mount_in_it_is_not(tmp_path):
    """A container can grow a chain of directories whose paths no path-based walk can open."""
    import subprocess

    root = tmp_path / "upper"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(3000):  # "d/" * 3000: 6000 bytes of path
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("bottom", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    os.close(fd)
    (root / "mnt").mkdir()
    (tmp_path / "elsewhere").mkdir()
    for i in range(10):
        (tmp_path / "elsewhere" / f"f{i}").write_text("x")
    subprocess.run(
        ["mount", "--bind", str(tmp_path / "elsewhere"), str(root / "mnt")], check=True, timeout=30
    )
    try:
        assert dir_usage(str(root)).inodes_used == 1 + 3000 + 1 + 1  # root, the chain, bottom, mnt
    finally:
        subprocess.run(["umount", str(root / "mnt")], check=True, timeout=30)
    from sandbox.trees import remove_tree

    remove_tree(root)
