"""Reading a layer's tar headers within bounds, before tarfile gives them memory or stack.

Python's tarfile reads a PAX header or a GNU long name/link whole, whatever size it declares (a
191 KB gzip layer declaring a 192 MiB PAX header cost the daemon ~780 MiB), follows each extension
header to the next by recursion (a chain of them ends in RecursionError), keeps every member it has
read, and reads a sparse file's map for as long as the map says it goes on. ``LayerTar`` is tarfile
with those bounded: each extension header at most MAX_HEADER_BYTES (as Go's archive/tar allows), at
most MAX_HEADER_CHAIN of them before a member, global PAX headers at most MAX_HEADER_BYTES in all,
sparse maps at most MAX_SPARSE_ENTRIES entries, in order and inside the file. Names are bounded where
they are used (``split_name``): MAX_PATH_BYTES in all, NAME_MAX per component, MAX_DEPTH deep.
"""

from __future__ import annotations

import tarfile
from tarfile import BLOCKSIZE, XGLTYPE, InvalidHeaderError, nti  # type: ignore[attr-defined]
from typing import Any

from calyx_base.errors import FailedPrecondition

MAX_HEADER_BYTES = 1024 * 1024
MAX_HEADER_CHAIN = 8
MAX_SPARSE_ENTRIES = 64 * 1024
# "/" + the member's path fits PATH_MAX (4096 with its NUL) inside the container.
MAX_PATH_BYTES = 4094
NAME_MAX = 255
# Deeper than any real image (npm's deepest node_modules trees stay far below), shallow enough that no
# recursive walk in host tools or Python's (recursion limit 1000) fails on the unpacked layer.
MAX_DEPTH = 512

EXTENSION_TYPES = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)
_SPARSE_PER_BLOCK = 21  # entries in one GNU sparse extension block
_MAP_TOO_LONG = f"a sparse map of more than {MAX_SPARSE_ENTRIES} entries; refused"


class UnsafeLayer(FailedPrecondition):
    """The archive tried to write outside its directory, or is not a layer we can unpack."""


def split_name(name: str) -> list[str]:
    """Path components of a member name; UnsafeLayer for absolute names, any ``..``, and names
    longer or deeper than a layer may hold."""
    if name.startswith("/"):
        raise UnsafeLayer(f"layer member {name!r}: absolute path refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"layer member {name!r}: '..' refused")
    if len(parts) > MAX_DEPTH:
        raise UnsafeLayer(f"layer member {_short(name)}: {len(parts)} levels deep, more than {MAX_DEPTH}")
    size = sum(len(_raw(p)) for p in parts) + len(parts) - 1
    if size > MAX_PATH_BYTES:
        raise UnsafeLayer(f"layer member {_short(name)}: a path of {size} bytes, more than {MAX_PATH_BYTES}")
    for part in parts:
        if len(_raw(part)) > NAME_MAX:
            raise UnsafeLayer(f"layer member {_short(name)}: a name longer than {NAME_MAX} bytes")
    return parts


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _short(name: str) -> str:
    return repr(name) if len(name) <= 200 else f"{name[:100]!r}...{name[-100:]!r}"


class LayerTar(tarfile.TarFile):
    """A tarfile reader whose headers are bounded (BoundedTarInfo) and which keeps no member list."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.extension_chain = 0
        self.global_header_bytes = 0
        kwargs["tarinfo"] = BoundedTarInfo
        super().__init__(*args, **kwargs)

    def next(self) -> tarfile.TarInfo | None:
        member = super().next()
        # tarfile keeps every member it read (for getmembers); a layer of millions of entries would
        # keep millions of TarInfos. A stream is read once, in order: nothing needs them.
        self.members.clear()  # type: ignore[attr-defined]
        return member


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile's header processing (``_proc_member``, the hook tarfile names for subclasses) with
    every size checked before tarfile reads what a header announces."""

    def _proc_member(self, archive: Any) -> Any:
        if self.size < 0:
            raise UnsafeLayer(f"layer member {_short(self.name)}: negative size {self.size}")
        if self.type not in EXTENSION_TYPES:
            archive.extension_chain = 0
            return super()._proc_member(archive)  # type: ignore[misc]
        archive.extension_chain += 1
        if archive.extension_chain > MAX_HEADER_CHAIN:
            raise UnsafeLayer(f"layer has more than {MAX_HEADER_CHAIN} extension headers in a row; refused")
        if self.size > MAX_HEADER_BYTES:
            raise UnsafeLayer(
                f"layer has a {_kind(self.type)} header of {self.size} bytes, more than"
                f" {MAX_HEADER_BYTES}; refused"
            )
        if self.type == XGLTYPE:
            archive.global_header_bytes += self.size
            if archive.global_header_bytes > MAX_HEADER_BYTES:
                raise UnsafeLayer(
                    f"layer has more than {MAX_HEADER_BYTES} bytes of global PAX headers; refused"
                )
        return super()._proc_member(archive)  # type: ignore[misc]

    def _proc_sparse(self, archive: Any) -> Any:
        """An old GNU sparse member, whose map goes on in extension blocks for as long as each says
        another follows: read here up to MAX_SPARSE_ENTRIES entries."""
        entries, extended, realsize = self._sparse_structs  # type: ignore[attr-defined]
        del self._sparse_structs  # type: ignore[attr-defined]
        blocks = 0
        while extended:
            blocks += 1
            if (blocks + 1) * _SPARSE_PER_BLOCK > MAX_SPARSE_ENTRIES:
                raise UnsafeLayer(f"layer member {_short(self.name)}: {_MAP_TOO_LONG}")
            block = archive.fileobj.read(BLOCKSIZE)
            if len(block) < BLOCKSIZE:
                raise UnsafeLayer(f"layer member {_short(self.name)}: its sparse map is cut short")
            for i in range(_SPARSE_PER_BLOCK):
                try:
                    offset = nti(block[i * 24 : i * 24 + 12])
                    length = nti(block[i * 24 + 12 : i * 24 + 24])
                except InvalidHeaderError:
                    break
                if offset and length:
                    entries.append((offset, length))
            extended = bool(block[504])
        self.sparse = entries
        self.offset_data = archive.fileobj.tell()
        archive.offset = self.offset_data + self._block(self.size)  # type: ignore[attr-defined]
        self.size = realsize
        return self

    def _proc_gnusparse_10(self, next: Any, pax_headers: Any, archive: Any) -> None:
        """A PAX (GNU 1.0) sparse member, whose map opens its data: a count, then offset and length
        lines; the count is checked before any entry is read, each line before it is kept."""
        numbers: list[int] = []
        wanted: int | None = None
        buf = archive.fileobj.read(BLOCKSIZE)
        while wanted is None or len(numbers) < wanted:
            line, newline, rest = buf.partition(b"\n")
            if not newline:
                more = archive.fileobj.read(BLOCKSIZE) if len(buf) < 32 else b""
                if not more:
                    raise UnsafeLayer(f"layer member {_short(next.name)}: its sparse map is malformed")
                buf += more
                continue
            if not line.isdigit():
                raise UnsafeLayer(f"layer member {_short(next.name)}: its sparse map is malformed")
            buf = rest
            if wanted is None:
                if int(line) > MAX_SPARSE_ENTRIES:
                    raise UnsafeLayer(f"layer member {_short(next.name)}: {_MAP_TOO_LONG}")
                wanted = 2 * int(line)
            else:
                numbers.append(int(line))
        next.offset_data = archive.fileobj.tell()
        next.sparse = list(zip(numbers[::2], numbers[1::2], strict=True))


def _kind(type_: bytes) -> str:
    if type_ == tarfile.GNUTYPE_LONGNAME:
        return "GNU long name"
    if type_ == tarfile.GNUTYPE_LONGLINK:
        return "GNU long link"
    return "PAX"


def sparse_map(member: tarfile.TarInfo) -> list[tuple[int, int]]:
    """A sparse member's (offset, length) data segments, unused slots left out."""
    entries: list[tuple[int, int]] = list(member.sparse or [])  # type: ignore[arg-type]
    return [(offset, length) for offset, length in entries if offset or length]


def check_sparse(member: tarfile.TarInfo) -> int:
    """The bytes a sparse member stores (its data segments); UnsafeLayer unless its map is in order,
    without overlaps and inside the file's size."""
    sparse = sparse_map(member)
    if len(sparse) > MAX_SPARSE_ENTRIES:
        raise UnsafeLayer(f"layer member {_short(member.name)}: {_MAP_TOO_LONG}")
    end = 0
    stored = 0
    for offset, length in sparse:
        if offset < end or length < 0 or offset + length > member.size:
            raise UnsafeLayer(
                f"layer member {_short(member.name)}: its sparse map is out of order or out of bounds"
            )
        end = offset + length
        stored += length
    return stored
