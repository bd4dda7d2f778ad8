"""Unpack one layer archive (gzip, zstd or plain tar) into an empty directory, safely, in overlayfs form.

Nothing in the archive can write outside the directory. Every path is resolved one component at a
time from a descriptor of the layer root with O_NOFOLLOW: absolute names and ``..`` are refused, and so
is any member whose parent is a symlink (the "symlink, then a file through it" attack) or a hard link
whose target is not a file already inside the layer. Symlinks are created but never followed.

OCI whiteouts become overlayfs ones so the directory can be a lower dir as is: ``.wh.NAME`` becomes a
0:0 character device NAME, ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its directory.
Ownership, modes (with setuid bits), mtimes, xattrs, device nodes and hard links are kept. The sha256
of the uncompressed stream is checked against the config's diff id.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard

from cri import trees
from cri.errors import FailedPrecondition

log = logging.getLogger("cri.images.unpack")

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX = "SCHILY.xattr."
CHUNK = 1024 * 1024
# tarfile's stream buffer: each small read (a 512-byte header) copies what is left of it, so it stays
# small; file data comes through in CHUNK reads regardless.
TAR_BUFSIZE = 64 * 1024
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeLayer(FailedPrecondition):
    """The archive tried to write outside its directory, or is not a layer we can unpack."""


@dataclass
class Usage:
    bytes: int = 0
    inodes: int = 0


class _Hashing:
    """A read-only file object that hashes what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
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

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
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


def _hashing_stream(blob: IO[bytes]) -> _Hashing | _GunzipHashing:
    """The layer's uncompressed tar stream, hashed as it is read (for the diff id). The decompressor
    is picked by magic bytes, whatever the media type claimed."""
    magic = blob.read(4)
    blob.seek(0)
    if magic[:2] == GZIP_MAGIC:
        return _GunzipHashing(blob)
    if magic == ZSTD_MAGIC:
        return _Hashing(zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True))
    return _Hashing(blob)


def unpack(blob_path: Path, dest: Path, diff_id: str) -> Usage:
    """Unpack the layer at ``blob_path`` into the empty dir ``dest``; UnsafeLayer if it cannot be done."""
    with open(blob_path, "rb") as blob:
        stream = _hashing_stream(blob)
        extractor = Extractor(dest)
        try:
            with tarfile.open(fileobj=stream, mode="r|", errorlevel=2, bufsize=TAR_BUFSIZE) as tar:  # type: ignore[call-overload]
                for member in tar:
                    extractor.add(member, tar)
            stream.drain()
        except (tarfile.TarError, EOFError, OSError, zlib.error, zstandard.ZstdError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise UnsafeLayer(f"layer {diff_id}: not a readable tar archive: {exc}") from None
        finally:
            extractor.close()
    actual = "sha256:" + stream.hasher.hexdigest()
    if actual != diff_id:
        raise UnsafeLayer(f"layer content has diff id {actual}, the image config says {diff_id}")
    return extractor.usage


def split_name(name: str) -> list[str]:
    """Path components of a member name; UnsafeLayer for absolute names and any ``..``."""
    if name.startswith("/"):
        raise UnsafeLayer(f"layer member {name!r}: absolute path refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"layer member {name!r}: '..' refused")
    return parts


class Extractor:
    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, DIR_FLAGS)
        self.usage = Usage()
        self._dir_meta: list[tuple[list[str], tarfile.TarInfo]] = []

    def close(self) -> None:
        try:
            self._apply_dir_meta()
        finally:
            os.close(self.root_fd)

    # --- resolution ---------------------------------------------------------------------------------

    def _open_dir(self, parts: list[str], create: bool, name: str) -> int:
        """A descriptor of the directory ``parts`` under the root, walked without following links."""
        fd = os.dup(self.root_fd)
        try:
            for comp in parts:
                try:
                    nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise UnsafeLayer(
                            f"layer member {name!r}: {comp!r} does not exist in the layer"
                        ) from None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafeLayer(
                            f"layer member {name!r}: {comp!r} is a symlink or not a directory; refused"
                        ) from None
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _clear(parent: int, base: str, keep_dir: bool) -> None:
        """Remove what is at ``base`` so a new member can take its place."""
        try:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return
        trees.remove_at(parent, base)

    # --- members ------------------------------------------------------------------------------------

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parts = split_name(member.name)
        self.usage.inodes += 1
        if not parts:  # the layer root itself ("./")
            if member.isdir():
                self._dir_meta.append(([], member))
            return
        base = parts[-1]
        if base.startswith(WHITEOUT):
            self._whiteout(parts, member.name)
            return
        parent = self._open_dir(parts[:-1], True, member.name)
        try:
            self._clear(parent, base, keep_dir=member.isdir())
            if member.isdir():
                with contextlib.suppress(FileExistsError):
                    os.mkdir(base, 0o700, dir_fd=parent)
                self._dir_meta.append((parts, member))
            elif member.isreg():
                self._file(parent, base, member, tar)
            elif member.issym():
                os.symlink(member.linkname, base, dir_fd=parent)
                self._meta(parent, base, member, is_link=True)
            elif member.islnk():
                self._hardlink(parent, base, member)
            elif member.ischr() or member.isblk() or member.isfifo():
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
                os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent)
                self._meta(parent, base, member)
            else:
                raise UnsafeLayer(f"layer member {member.name!r}: unsupported type {member.type!r}")
        finally:
            os.close(parent)

    def _whiteout(self, parts: list[str], name: str) -> None:
        base = parts[-1]
        if base == OPAQUE:
            fd = self._open_dir(parts[:-1], True, name)
            try:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
            return
        target = base[len(WHITEOUT) :]
        if target in ("", ".", ".."):
            raise UnsafeLayer(f"layer member {name!r}: bad whiteout")
        parent = self._open_dir(parts[:-1], True, name)
        try:
            self._clear(parent, target, keep_dir=False)
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        finally:
            os.close(parent)

    def _file(self, parent: int, base: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        fd = os.open(
            base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
        )
        try:
            source = tar.extractfile(member)
            if source is not None:
                with os.fdopen(os.dup(fd), "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
            self.usage.bytes += member.size
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)
            self._xattrs(fd, member)
            os.utime(fd, ns=(int(member.mtime * 1e9), int(member.mtime * 1e9)))
        finally:
            os.close(fd)

    def _hardlink(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        target = split_name(member.linkname)
        if not target:
            raise UnsafeLayer(f"layer member {member.name!r}: hard link to the layer root refused")
        tparent = self._open_dir(target[:-1], False, member.name)
        try:
            try:
                st = os.stat(target[-1], dir_fd=tparent, follow_symlinks=False)
            except FileNotFoundError:
                raise UnsafeLayer(
                    f"layer member {member.name!r}: hard link target {member.linkname!r} is not in the layer"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeLayer(f"layer member {member.name!r}: hard link to a directory refused")
            os.link(target[-1], base, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tparent)

    def _meta(self, parent: int, base: str, member: tarfile.TarInfo, is_link: bool = False) -> None:
        os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        if not is_link:
            os.chmod(base, member.mode & 0o7777, dir_fd=parent)
        ns = int(member.mtime * 1e9)
        os.utime(base, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)

    @staticmethod
    def _xattrs(fd: int, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith(XATTR_PAX):
                continue
            name = key[len(XATTR_PAX) :]
            if name.startswith("trusted.overlay."):
                continue  # overlayfs metadata is ours to write, never the archive's
            raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
            try:
                os.setxattr(fd, name, raw)
            except OSError as exc:
                log.warning("xattr not kept", extra={"xattr": name, "member": member.name, "error": str(exc)})

    def _apply_dir_meta(self) -> None:
        """Directory owners, modes and mtimes last (their children changed the mtimes meanwhile)."""
        for parts, member in reversed(self._dir_meta):
            try:
                fd = self._open_dir(parts, False, member.name)
            except (UnsafeLayer, OSError):
                continue  # replaced by a later member
            try:
                os.fchown(fd, member.uid, member.gid)
                os.fchmod(fd, member.mode & 0o7777)
                self._xattrs(fd, member)
                ns = int(member.mtime * 1e9)
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)


def remove_layer_dir(path: Path) -> None:
    """Remove an unpacked layer (read-only dirs, any depth) without following any link inside it."""
    trees.remove_tree(path)
