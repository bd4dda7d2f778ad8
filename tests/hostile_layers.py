"""Hostile layers for the archive tests, written byte by byte: what no honest tar writer makes.

Each builder returns a critest.oci Layer (the blob a registry serves and its diff id). Bodies are
streamed through the compressor, so a layer whose tar is hundreds of MiB (and compresses to a few
hundred KiB) is never held whole here either.
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from collections.abc import Iterable, Iterator

import zstandard

from critest.oci import MEDIA_OCI_LAYER, MTIME, Blob, Entry, Layer, layer_from_tar, tar_bytes

MiB = 1024 * 1024
BLOCK = 512
END = b"\0" * (2 * BLOCK)


def streamed_layer(pieces: Iterable[bytes], compression: str = "gzip") -> Layer:
    """The layer whose uncompressed tar is the concatenation of ``pieces``."""
    hasher = hashlib.sha256()
    if compression == "gzip":
        compressor: object = zlib.compressobj(9, zlib.DEFLATED, 31)
        media = MEDIA_OCI_LAYER + "+gzip"
    elif compression == "zstd":
        compressor = zstandard.ZstdCompressor(level=3).compressobj()
        media = MEDIA_OCI_LAYER + "+zstd"
    else:
        raise ValueError(compression)
    out = []
    for piece in pieces:
        hasher.update(piece)
        out.append(compressor.compress(piece))  # type: ignore[attr-defined]
    out.append(compressor.flush())  # type: ignore[attr-defined]
    return Layer(Blob(media, b"".join(out)), "sha256:" + hasher.hexdigest())


def header(name: str, size: int, type_: bytes, mode: int = 0o644) -> bytes:
    """A ustar header block (any type flag; tarfile checks nothing about it when writing)."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode, info.mtime = size, type_, mode, MTIME
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def repeated(byte: bytes, size: int) -> Iterator[bytes]:
    """``size`` bytes of ``byte``, in 1 MiB pieces."""
    chunk = byte * MiB
    while size > 0:
        yield chunk[: min(size, MiB)]
        size -= MiB


def small_file(name: str = "ok", data: bytes = b"ok\n") -> bytes:
    return header(name, len(data), tarfile.REGTYPE) + data + padding(len(data))


def pax_header_bomb(size: int = 192 * MiB) -> Layer:
    """One PAX extended header of ``size`` bytes (a single, well-formed ``comment`` record), then a
    plain file: Python's tarfile reads the whole header into memory, and then some."""
    key = b"comment="
    length = size
    value = size - len(str(length)) - 1 - len(key) - 1
    record_head = b"%d %s" % (length, key)
    assert len(record_head) + value + 1 == size

    def pieces() -> Iterator[bytes]:
        yield header("././@PaxHeader", size, tarfile.XHDTYPE)
        yield record_head
        yield from repeated(b"a", value)
        yield b"\n" + padding(size)
        yield small_file()
        yield END

    return streamed_layer(pieces())


def gnu_longname_bomb(size: int = 192 * MiB) -> Layer:
    """A GNU long-name header of ``size`` bytes before a plain file."""

    def pieces() -> Iterator[bytes]:
        yield header("././@LongLink", size, tarfile.GNUTYPE_LONGNAME)
        yield from repeated(b"n", size - 1)
        yield b"\0" + padding(size)
        yield small_file("placeholder")
        yield END

    return streamed_layer(pieces())


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def gnu_sparse_header(name: str, realsize: int, segments: list[tuple[int, int]]) -> bytes:
    """An old GNU sparse member's header ('S'): up to four (offset, length) data segments of a file
    that is ``realsize`` bytes long; the data that follows holds the segments back to back."""
    block = bytearray(BLOCK)
    stored = sum(length for _, length in segments)
    block[0 : len(name)] = name.encode()
    block[100:108] = _octal(0o644, 8)
    block[108:116] = _octal(0, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = _octal(stored, 12)
    block[136:148] = _octal(MTIME, 12)
    block[156:157] = tarfile.GNUTYPE_SPARSE
    block[257:265] = tarfile.GNU_MAGIC
    for i, (offset, length) in enumerate(segments[:4]):
        block[386 + 24 * i : 398 + 24 * i] = _octal(offset, 12)
        block[398 + 24 * i : 410 + 24 * i] = _octal(length, 12)
    block[483:495] = _octal(realsize, 12)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


SPARSE_TAIL = b"the end of a sparse file\n"


def sparse_bomb(realsize: int = 256 * MiB) -> Layer:
    """A file of ``realsize`` bytes of which the archive stores one block (its end): the layer is a
    hundred-odd bytes, the file it asks for as big as it likes."""
    data = SPARSE_TAIL.ljust(BLOCK, b".")
    raw = gnu_sparse_header("sparse", realsize, [(realsize - BLOCK, BLOCK)]) + data + END
    return layer_from_tar(raw)


def zeros_bomb(size: int, compression: str = "gzip") -> Layer:
    """One file of ``size`` zero bytes: a decompression bomb of about size/1000 compressed bytes."""

    def pieces() -> Iterator[bytes]:
        yield header("zeros", size, tarfile.REGTYPE)
        yield from repeated(b"\0", size)
        yield padding(size) + END

    return streamed_layer(pieces(), compression)


def trailing_bomb(size: int, compression: str = "zstd") -> Layer:
    """A small, valid archive followed by ``size`` bytes of zeros after its end (read only to hash)."""

    def pieces() -> Iterator[bytes]:
        yield small_file()
        yield END
        yield from repeated(b"\0", size)

    return streamed_layer(pieces(), compression)


def deep_chain(depth: int, name: str = "d") -> Layer:
    """A chain of ``depth`` nested directories (PAX names past 100 bytes) with a file at the bottom."""
    entries = [Entry("/".join([name] * (i + 1)), "dir", mode=0o755) for i in range(depth)]
    entries.append(Entry("/".join([name] * depth) + "/bottom", data=b"bottom\n"))
    return layer_from_tar(tar_bytes(entries))


def long_path(length: int) -> Layer:
    """One file whose path is about ``length`` bytes long, in 100-byte components."""
    parts = ["p" * 99] * (length // 100)
    entries = [Entry("/".join(parts[: i + 1]), "dir", mode=0o755) for i in range(len(parts))]
    entries.append(Entry("/".join(parts) + "/file", data=b"far\n"))
    return layer_from_tar(tar_bytes(entries))


def pax_records(records: dict[str, str]) -> bytes:
    """PAX extended header records, each ``"<length> <key>=<value>\\n"``."""
    out = b""
    for key, value in records.items():
        body = f" {key}={value}\n".encode()
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        out += str(length).encode() + body
    return out


def pax_member(records: dict[str, str], type_: bytes = tarfile.XHDTYPE) -> bytes:
    data = pax_records(records)
    return header("././@PaxHeader", len(data), type_) + data + padding(len(data))


def pax_sparse(realsize: int, segments: list[tuple[int, int]], count: int | None = None) -> bytes:
    """A GNU 1.0 sparse member in PAX form: the map (``count`` entries, as many as ``segments`` unless
    told otherwise) opens the member's data, then the segments' bytes ("s" each)."""
    numbers = [len(segments) if count is None else count] + [n for seg in segments for n in seg]
    sparse_map = "".join(f"{n}\n" for n in numbers).encode()
    sparse_map += padding(len(sparse_map))
    stored = b"".join(b"s" * length for _, length in segments)
    records = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "pax-sparse",
        "GNU.sparse.realsize": str(realsize),
    }
    body = sparse_map + stored
    return (
        pax_member(records)
        + header("GNUSparseFile.0/pax-sparse", len(body), tarfile.REGTYPE)
        + body
        + padding(len(body))
    )
