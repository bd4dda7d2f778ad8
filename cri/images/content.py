"""The content store: blobs (manifests, configs, layer archives) by digest, each verified before it is used.

A blob streams into ``ingest/`` while its digest and size are computed; only when both match the
descriptor is it fsynced and renamed to ``blobs/<algorithm>/<hex>``. A blob at its final path is therefore
always complete and correct; whatever a crash left in ``ingest/`` is listed by ``leftovers()`` for the
image manager to remove. Paths are made only from digests that passed ``validate.is_digest`` and are
checked to lie directly under the store (defence in depth: a planted symlink cannot lead a read or a
delete out of it).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from calyx_base.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from cri.images import validate
from cri.images.instruments import IMAGE_PULL_BYTES

log = logging.getLogger("cri.images.content")


class DigestMismatch(FailedPrecondition):
    """The registry sent bytes that do not match the digest or size it promised."""


def real_dir(path: Path) -> Path:
    """``path`` made (if missing) and resolved once, so that paths under it need no resolving later."""
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve(strict=True)


def inside(root: Path, name: str) -> Path:
    """``root/name`` for a resolved ``root`` and one plain name, refused if the entry there is a symlink:
    such a path cannot lie anywhere but directly under ``root``."""
    path = root / name
    if not name or name in (".", "..") or "/" in name or "\0" in name or path.is_symlink():
        raise FailedPrecondition(f"refusing path {validate.shown(str(path))}: it does not lie under {root}")
    return path


def split_digest(digest: str) -> tuple[str, str]:
    """(algorithm, hex) of a digest Calyx supports; InvalidArgument otherwise."""
    try:
        return validate.split(digest)
    except ValueError:
        raise InvalidArgument(
            f"unsupported or malformed digest {validate.shown(digest)} (sha256 or sha512, lowercase hex)"
        ) from None


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = real_dir(root)
        self.ingest = real_dir(self.root / "ingest")
        self._dirs = {a: real_dir(self.root / "blobs" / a) for a in validate.ALGORITHMS}
        for algorithm, path in self._dirs.items():
            if path != self.root / "blobs" / algorithm:
                raise FailedPrecondition(f"content store dir {path} is not under {self.root}")

    def path(self, digest: str) -> Path:
        algorithm, hexd = split_digest(digest)
        return inside(self._dirs[algorithm], hexd)

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
        final = self.path(digest)
        hexd = final.name
        tmp = inside(self.ingest, f"{hexd[:64]}.{uuid.uuid4().hex[:8]}")
        hasher = validate.hasher(digest)
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
                actual = f"{hasher.name}:{hasher.hexdigest()}"
                if actual != digest:
                    raise DigestMismatch(f"blob {digest}: content has digest {actual}; refusing it")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def put(self, digest: str, data: bytes) -> Path:
        return self.write(digest, len(data), [data])

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> set[str]:
        """Every stored blob; names that are not a digest's hex (nothing Calyx wrote) are left out."""
        found = set()
        for algorithm, path in self._dirs.items():
            for p in path.iterdir():
                if validate.is_digest(f"{algorithm}:{p.name}"):
                    found.add(f"{algorithm}:{p.name}")
        return found

    def leftovers(self) -> list[Path]:
        """What interrupted downloads left in ingest/ (each name is random: no later download reuses it)."""
        return list(self.ingest.iterdir())

    def usage(self) -> tuple[int, int]:
        """(bytes, inodes) used by stored blobs."""
        total, inodes = 0, 0
        for path in self._dirs.values():
            for p in path.iterdir():
                st = p.lstat()
                total += st.st_blocks * 512
                inodes += 1
        return total, inodes


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
