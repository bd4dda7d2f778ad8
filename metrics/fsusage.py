"""Bytes and inodes used by a directory tree (a container's writable layer), cheaply.

A walk through directory descriptors (sandbox.trees.scan: a container's writable layer may be thousands of
directories deep, past PATH_MAX) that stays on the directory's filesystem, counts allocated blocks (what
the disk really lost, like du) and each inode once (hard links share one). Files that vanish during
the walk are skipped: a running container writes while we count. ``FsUsageCache`` keeps each result
for a while, because kubelet and Prometheus ask far more often than a writable layer changes
meaningfully and a walk costs time proportional to the file count.
"""

from __future__ import annotations

import os
import stat
import threading
import time

from metrics.readings import FsUsage
from sandbox import trees


def dir_usage(path: str) -> FsUsage:
    """Walk ``path`` now (any depth or path length: sandbox.trees.scan). Raises FileNotFoundError if
    ``path`` itself does not exist."""
    timestamp = time.time_ns()
    root = os.lstat(path)
    device = root.st_dev
    linked: set[int] = set()  # inodes with several names, counted once
    inodes = 1
    used = root.st_blocks * 512
    for st in trees.scan(path):
        if st.st_dev != device:
            continue  # a mount inside the tree belongs to another filesystem
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if st.st_ino in linked:
                continue
            linked.add(st.st_ino)
        inodes += 1
        used += st.st_blocks * 512
    return FsUsage(timestamp_ns=timestamp, path=path, used_bytes=used, inodes_used=inodes)


class FsUsageCache:
    """dir_usage results kept for ``ttl_seconds``; concurrent askers for one path share one walk."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._results: dict[str, tuple[float, FsUsage]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, path: str) -> FsUsage:
        now = time.monotonic()
        cached = self._results.get(path)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        with self._guard:
            lock = self._locks.setdefault(path, threading.Lock())
        with lock:
            cached = self._results.get(path)
            if cached is not None and time.monotonic() - cached[0] < self.ttl:
                return cached[1]
            usage = dir_usage(path)
            self._results[path] = (time.monotonic(), usage)
            return usage

    def forget(self, keep: set[str]) -> None:
        """Drop results of paths not in ``keep`` (removed containers)."""
        with self._guard:
            for path in [p for p in list(self._results) if p not in keep]:  # list(): writers run
                self._results.pop(path, None)
                self._locks.pop(path, None)
