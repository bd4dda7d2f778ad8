"""Unpack one layer archive (gzip, zstd or plain tar) into an empty directory, safely, in overlayfs form.

Nothing in the archive can write outside the directory. Every path is resolved one component at a
time from a descriptor of the layer root with O_NOFOLLOW: absolute names and ``..`` are refused, and so
is any member whose parent is a symlink (the "symlink, then a file through it" attack) or a hard link
whose target is not a file already inside the layer. Symlinks are created but never followed.

OCI whiteouts become overlayfs ones so the directory can be a lower dir as is: ``.wh.NAME`` becomes a
0:0 character device NAME, ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its directory.
Ownership, modes (with setuid bits), mtimes, xattrs, device nodes and hard links are kept; sparse
files keep their holes. The sha256 of the uncompressed stream is checked against the config's diff id.

No archive can exhaust the node either: headers are bounded before tarfile reads them (tarbounds.py),
names in length and depth, and what the layer unpacks to by ``images.max_layer_unpacked_bytes``
(layerstream.Budget: the decompressed stream as it is read, each file's full size before it is written).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import zstandard

from cri.images.layerstream import CHUNK, Budget, LayerTooLarge, tar_stream
from cri.images.tarbounds import LayerTar, UnsafeLayer, check_sparse, sparse_map, split_name
from sandbox import trees

__all__ = ["LayerTooLarge", "UnsafeLayer", "Usage", "remove_layer_dir", "split_name", "unpack"]

log = logging.getLogger("cri.images.unpack")

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX = "SCHILY.xattr."
# tarfile's stream buffer: each small read (a 512-byte header) copies what is left of it, so it stays
# small; file data comes through in CHUNK reads regardless.
TAR_BUFSIZE = 64 * 1024
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LINK_BYTES = 4095  # a symlink's target: the kernel's own limit, refused here with a clear message


@dataclass
class Usage:
    bytes: int = 0
    inodes: int = 0


def unpack(
    blob_path: Path, dest: Path, diff_id: str, max_bytes: int, layer: str = "", deadline: float | None = None
) -> Usage:
    """Unpack the layer at ``blob_path`` into the empty dir ``dest``: UnsafeLayer if it cannot be done
    safely, LayerTooLarge if it unpacks to more than ``max_bytes``, DeadlineExceeded once ``deadline``
    (time.monotonic) has passed. ``layer`` (the blob's digest) names it in errors. ``dest`` is left
    half-filled on any error: the caller removes it."""
    layer = layer or diff_id
    with open(blob_path, "rb") as blob:
        budget = Budget(max_bytes, layer, deadline)
        stream = tar_stream(blob, budget)
        extractor = Extractor(dest, budget)
        try:
            with LayerTar.open(fileobj=stream, mode="r|", errorlevel=2, bufsize=TAR_BUFSIZE) as tar:  # type: ignore[call-overload]
                while (member := tar.next()) is not None:
                    budget.in_time()  # members that cost little of the stream but a syscall each
                    try:
                        extractor.add(member, tar)
                    except (OverflowError, ValueError) as exc:  # ids, times, device numbers out of range
                        raise UnsafeLayer(f"layer {layer}: member {member.name[:200]!r}: {exc}") from None
            stream.drain()
        except UnsafeLayer as exc:
            if layer not in exc.message:
                exc.message = f"layer {layer}: {exc.message}"
            raise
        except (tarfile.TarError, EOFError, OSError, zlib.error, zstandard.ZstdError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise UnsafeLayer(f"layer {layer}: not a readable tar archive: {exc}") from None
        finally:
            extractor.close()
    actual = "sha256:" + stream.hasher.hexdigest()
    if actual != diff_id:
        raise UnsafeLayer(f"layer content has diff id {actual}, the image config says {diff_id}")
    return extractor.usage


class Extractor:
    def __init__(self, root: Path, budget: Budget) -> None:
        self.root_fd = os.open(root, DIR_FLAGS)
        self.budget = budget
        self.usage = Usage()
        # Directory mtimes are set last (their children change them meanwhile): path -> mtime in ns.
        self._dir_mtimes: dict[str, int] = {}

    def close(self) -> None:
        try:
            self._apply_dir_mtimes()
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
                self._dir(self.root_fd, parts, member)
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
                fd = os.open(base, DIR_FLAGS, dir_fd=parent)
                try:
                    self._dir(fd, parts, member)
                finally:
                    os.close(fd)
            elif member.isreg():
                self._file(parent, base, member, tar)
            elif member.issym():
                if len(member.linkname.encode("utf-8", "surrogateescape")) > MAX_LINK_BYTES:
                    raise UnsafeLayer(
                        f"layer member {member.name!r}: symlink target over {MAX_LINK_BYTES} bytes"
                    )
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

    def _dir(self, fd: int, parts: list[str], member: tarfile.TarInfo) -> None:
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        self._xattrs(fd, member)
        self._dir_mtimes["/".join(parts)] = int(member.mtime * 1e9)

    def _file(self, parent: int, base: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        stored = check_sparse(member) if member.issparse() else member.size
        self.budget.room_for(member.size, f"file {member.name[:200]!r}")
        self.budget.charge(member.size - stored)  # a sparse file's holes: the stream never carries them
        fd = os.open(
            base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
        )
        try:
            source = None if member.issparse() else tar.extractfile(member)
            if member.issparse():
                _copy_sparse(tar, fd, member)
            elif source is not None:
                with os.fdopen(os.dup(fd), "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
            self.usage.bytes += stored
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

    def _apply_dir_mtimes(self) -> None:
        for path, ns in self._dir_mtimes.items():
            parts = path.split("/") if path else []
            try:
                fd = self._open_dir(parts, False, path)
            except (UnsafeLayer, OSError):
                continue  # replaced by a later member
            try:
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)


def _copy_sparse(tar: tarfile.TarFile, fd: int, member: tarfile.TarInfo) -> None:
    """Write a sparse member's data segments (stored back to back after its header) where its map
    puts them; the holes stay holes."""
    data = tar.fileobj
    assert data is not None
    segments = sparse_map(member)
    if sum(length for _, length in segments) > tar.offset - member.offset_data:
        raise UnsafeLayer(f"layer member {member.name[:200]!r}: its sparse map names more data than it holds")
    data.seek(member.offset_data)  # where the stream already is: tarfile streams only go forward
    for offset, length in segments:
        os.lseek(fd, offset, os.SEEK_SET)
        while length:
            chunk = data.read(min(length, CHUNK))
            if not chunk:
                raise UnsafeLayer(f"layer member {member.name[:200]!r}: its data ends early")
            length -= len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    os.ftruncate(fd, member.size)


def remove_layer_dir(path: Path) -> None:
    """Remove an unpacked layer (read-only dirs, any depth) without following any link inside it."""
    trees.remove_tree(path)
