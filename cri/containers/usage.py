"""The containers' writable layers as ImageFsInfo reports them: one filesystem, its bytes and inodes.

A walk costs time per file and the layers change all the time: kubelet's polls share a result for a
few seconds.
"""

from __future__ import annotations

from pathlib import Path

from metrics.fsusage import FsUsageCache

TTL_SECONDS = 5.0


class WritableLayers:
    def __init__(self, containers_dir: Path) -> None:
        self.containers_dir = containers_dir
        self._cache = FsUsageCache(ttl_seconds=TTL_SECONDS)

    def usage(self) -> tuple[Path, int, int]:
        """(the dir they live in, bytes, inodes) of every container's dir."""
        try:
            walked = self._cache.get(str(self.containers_dir))
        except FileNotFoundError:
            return self.containers_dir, 0, 0
        return self.containers_dir, walked.used_bytes, walked.inodes_used
