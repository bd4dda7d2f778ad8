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
