"""The content store: blobs (manifests, configs, layer archives) by digest, each verified before it is used.

A blob streams into ``ingest/`` while its sha256 and size are computed; only when both match the
descriptor is it fsynced and renamed to ``blobs/sha256/<hex>``. A blob at its final path is therefore
always complete and correct; whatever a crash left in ``ingest/`` is listed by ``leftovers()`` for the
image manager to remove.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from cri.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from cri.instruments import IMAGE_PULL_BYTES

log = logging.getLogger("cri.images.content")


class DigestMismatch(FailedPrecondition):
    """The registry sent bytes that do not match the digest or size it promised."""


def split_digest(digest: str) -> tuple[str, str]:
    algo, sep, hexd = digest.partition(":")
    if not sep or algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise InvalidArgument(f"unsupported or malformed digest {digest!r} (sha256 only)")
    return algo, hexd


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.ingest = root / "ingest"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.ingest.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.blobs / split_digest(digest)[1]

    def has(self, digest: str, size: int | None = None) -> bool:
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def write(
        self,
        digest: str,
        size: int | None,
        chunks: Iterable[bytes],
        deadline: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Path:
        """Stream ``chunks`` into the store as ``digest``; DigestMismatch if the bytes are not it.

        ``size`` None means unknown (manifests fetched by tag); the digest check still applies.
        """
        _, hexd = split_digest(digest)
        final = self.blobs / hexd
        tmp = self.ingest / f"{hexd}.{uuid.uuid4().hex[:8]}"
        hasher = hashlib.sha256()
        written = 0
        try:
            with open(tmp, "xb") as out:
                for chunk in chunks:
                    written += len(chunk)
                    if size is not None and written > size:
                        raise DigestMismatch(
                            f"blob {digest}: registry sent more than the {size} bytes expected"
                        )
                    if deadline is not None and time.monotonic() > deadline:
                        raise DeadlineExceeded(f"blob {digest}: deadline passed after {written} bytes")
                    hasher.update(chunk)
                    out.write(chunk)
                    IMAGE_PULL_BYTES.inc(len(chunk))
                    if progress is not None:
                        progress(len(chunk))
                if size is not None and written != size:
                    raise DigestMismatch(f"blob {digest}: got {written} bytes, expected {size}")
                actual = "sha256:" + hasher.hexdigest()
                if actual != digest:
                    raise DigestMismatch(f"blob {digest}: content has digest {actual}; refusing it")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.rename(tmp, final)
            _fsync_dir(self.blobs)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def put(self, digest: str, data: bytes) -> Path:
        return self.write(digest, len(data), [data])

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> set[str]:
        return {f"sha256:{p.name}" for p in self.blobs.iterdir() if len(p.name) == 64}

    def leftovers(self) -> list[Path]:
        """What interrupted downloads left in ingest/ (each name is random: no later download reuses it)."""
        return list(self.ingest.iterdir())

    def usage(self) -> tuple[int, int]:
        """(bytes, inodes) used by stored blobs."""
        total, inodes = 0, 0
        for p in self.blobs.iterdir():
            st = p.stat()
            total += st.st_blocks * 512
            inodes += 1
        return total, inodes


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
