"""A layer blob as its uncompressed tar stream: decompressed, hashed for the diff id, and bounded.

The decompressor is picked by magic bytes, whatever the media type claimed. Every byte the stream
yields is charged to the layer's Budget (``images.max_layer_unpacked_bytes``): a decompression bomb,
a stream of millions of headers, or gigabytes of padding after the archive's end all stop at the cap,
with at most one CHUNK decompressed beyond it, whichever part of the layer they hide in.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from typing import IO

import zstandard

from calyx_base.errors import DeadlineExceeded, ResourceExhausted

CHUNK = 1024 * 1024
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
CAP_OPTION = "images.max_layer_unpacked_bytes"


class LayerTooLarge(ResourceExhausted):
    """The layer unpacks to more than the configured cap."""


class Budget:
    """The bytes a layer has unpacked to so far, against its cap; and the pull's deadline, checked as
    the layer is read (every block of the stream) and unpacked (every member), not only between layers:
    a layer of millions of members or gigabytes must not outlive the pull."""

    def __init__(self, cap: int, layer: str, deadline: float | None = None) -> None:
        self.cap = cap
        self.layer = layer
        self.deadline = deadline
        self.used = 0

    def charge(self, n: int) -> None:
        self.used += n
        if self.used > self.cap:
            raise self.too_large()
        self.in_time()

    def in_time(self) -> None:
        """DeadlineExceeded once the pull's deadline has passed."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded(
                f"layer {self.layer}: unpacking stopped at the pull's deadline ({self.used} bytes in)",
                self.layer,
            )

    def room_for(self, n: int, what: str) -> None:
        """Refuse ``what`` (``n`` bytes still to come) before anything of it is written."""
        if self.used + n > self.cap:
            raise self.too_large(f" ({what} alone is {n} bytes)")

    def too_large(self, detail: str = "") -> LayerTooLarge:
        return LayerTooLarge(
            f"layer {self.layer} unpacks to more than {self.cap} bytes{detail}, the cap {CAP_OPTION}"
            " sets; refused",
            self.layer,
        )


class _Hashing:
    """A read-only file object that hashes (and charges) what passes through it."""

    def __init__(self, raw: IO[bytes], budget: Budget) -> None:
        self.raw = raw
        self.budget = budget
        self.hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(CHUNK if size < 0 else min(size, CHUNK))
        self.budget.charge(len(data))
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class _GunzipHashing:
    """Gzip layers decompressed with zlib over CHUNK-sized reads, hashing the output as it is made.

    gzip.GzipFile reads 8 KiB at a time through Python-level buffering (a 50 MB layer: ~6,400 reads,
    each with its own crc32 call); here zlib reads 1 MiB of the blob at once and checks each member's
    CRC and length itself (wbits 31), and ``read`` hands out slices of the decompressed block.
    Concatenated gzip members are decompressed one after the other, as gzip does; zero padding after
    the last member is allowed (as gzip allows it), anything else after it is an error.
    """

    def __init__(self, raw: IO[bytes], budget: Budget) -> None:
        self.raw = raw
        self.budget = budget
        self.hasher = hashlib.sha256()
        self._z = zlib.decompressobj(31)
        self._buf = b""
        self._pos = 0
        self._eof = False

    def _next_member(self) -> bytes:
        """After a member's end, the start of the next one (a fresh decompressor for it), or b"" when
        the stream ends. Zero padding between or after members is skipped, as gzip does."""
        rest = self._z.unused_data
        while True:
            rest = rest.lstrip(b"\0")
            if rest:
                break
            rest = self.raw.read(CHUNK)
            if not rest:
                return b""
        if len(rest) < 2:
            rest += self.raw.read(CHUNK)
        if rest[:2] != GZIP_MAGIC:
            raise EOFError("data after the end of a gzip layer is not another gzip member")
        self._z = zlib.decompressobj(31)
        return rest

    def _fill(self) -> None:
        """Decompress the next block into the buffer (left empty only at the end of the stream)."""
        while not self._eof:
            if self._z.eof:
                data = self._next_member()
                if not data:
                    self._eof = True
                    return
            else:
                data = self._z.unconsumed_tail or self.raw.read(CHUNK)
                if not data:
                    raise EOFError("compressed layer ended before the end of its gzip stream")
            out = self._z.decompress(data, CHUNK)
            if out:
                self.budget.charge(len(out))
                self.hasher.update(out)
                self._buf, self._pos = out, 0
                return

    def read(self, size: int = -1) -> bytes:
        if self._pos >= len(self._buf):
            self._fill()
            if self._pos >= len(self._buf):
                return b""
        end = len(self._buf) if size < 0 else self._pos + size
        data = self._buf[self._pos : end]
        self._pos += len(data)
        return data

    def drain(self) -> None:
        while True:
            self._pos = len(self._buf)
            self._fill()
            if self._pos >= len(self._buf):
                return


def tar_stream(blob: IO[bytes], budget: Budget) -> _Hashing | _GunzipHashing:
    """The layer's uncompressed tar stream, hashed (``.hasher``, for the diff id) and charged to
    ``budget`` as it is read; ``drain()`` reads what the archive left after its end."""
    magic = blob.read(4)
    blob.seek(0)
    if magic[:2] == GZIP_MAGIC:
        return _GunzipHashing(blob, budget)
    if magic == ZSTD_MAGIC:
        return _Hashing(zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True), budget)
    return _Hashing(blob, budget)
