"""Removing (and measuring) a directory tree that an image layer or a container made: of any depth and
path length.

A layer or a container's writable layer can hold a chain of directories thousands deep whose full
paths are far longer than PATH_MAX: a recursive walk runs out of Python stack on it, and a walk by
full paths runs out of path. This one is a loop that holds one directory descriptor at a time: it
goes down with openat(O_NOFOLLOW) and back up through "..", checking each time that the directory
it reaches is the one it came from (device and inode), so a rename meanwhile stops it rather than
steering it elsewhere. Each directory is listed once: its files go at once, its subdirectories are
remembered and visited one after the other.

It never follows a symlink and never crosses into another mount: a mount point in the tree (a volume,
a root filesystem still mounted) stops the removal with an error naming it, so nothing is deleted
through it. A directory whose mode refuses a removal (Calyx without CAP_DAC_OVERRIDE) is made u+rwx
and the removal tried again; immutable or append-only files are left and reported. ``scan`` walks
a tree the same way to measure it (a running container's writable layer).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from calyx_base.errors import FailedPrecondition
from sandbox.mounts import mount_root

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

class RemoveFailed(FailedPrecondition):
    """Part of a tree could not be removed; the message names the tree, the entry and why."""


@dataclass
class _Frame:
    """A directory on the way down: its name in its parent, its identity, the subdirs left to visit
    (None until it has been listed)."""

    name: str
    dev: int
    ino: int
    subdirs: list[str] | None = field(default=None)


class _Removal:
    def __init__(self, top: Path) -> None:
        self.top = top
        self.trail: list[_Frame] = []
        self.fd = -1

    def fail(self, name: str, reason: str) -> RemoveFailed:
        """The error about ``name`` in the directory the walk is in (its path from the top shortened)."""
        where = "/".join([*(f.name for f in self.trail[1:]), name]) if self.trail else name
        if len(where) > 200:
            where = f"...{where[-200:]} (depth {len(self.trail)})"
        return RemoveFailed(f"cannot remove {self.top}: {where}: {reason}", str(self.top))

    # --- one entry --------------------------------------------------------------------------------

    def retry_writable(self, dir_fd: int, name: str, op: str) -> None:
        """unlink or rmdir ``name`` in ``dir_fd``; a permission error makes the dir u+rwx once."""
        remove = os.rmdir if op == "rmdir" else os.unlink
        try:
            remove(name, dir_fd=dir_fd)
            return
        except FileNotFoundError:
            return
        except PermissionError:
            pass
        except OSError as exc:
            raise self.fail(name, exc.strerror or str(exc)) from None
        try:
            mode = os.fstat(dir_fd).st_mode
            os.fchmod(dir_fd, stat.S_IMODE(mode) | stat.S_IRWXU)
            remove(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if isinstance(exc, PermissionError):
                reason += " (immutable or append-only?)"
            raise self.fail(name, reason) from None

    def open_dir(self, dir_fd: int, name: str, st: os.stat_result) -> int | None:
        """A descriptor of the subdirectory ``name`` (None if it has gone), after checking that it is
        no mount point and that what was opened is what was looked at."""
        mounted = mount_root(name, dir_fd)
        if mounted is None:
            mounted = st.st_dev != os.fstat(dir_fd).st_dev
        if mounted:
            raise self.fail(name, "a mount point; unmount it first (nothing below it was touched)")
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except PermissionError:
            self.make_searchable(dir_fd, name)
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise self.fail(name, exc.strerror or str(exc)) from None
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise self.fail(name, "replaced while being removed")
        return fd

    def make_searchable(self, dir_fd: int, name: str) -> None:
        """chmod u+rwx a directory that cannot be opened, through an O_PATH descriptor of it (so a
        symlink put in its place is not followed)."""
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            raise self.fail(name, exc.strerror or str(exc)) from None
        try:
            mode = os.fstat(fd).st_mode
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(mode) | stat.S_IRWXU)
        except OSError as exc:
            raise self.fail(name, exc.strerror or str(exc)) from None
        finally:
            os.close(fd)

    def clear_files(self, fd: int) -> list[str]:
        """Unlink everything in ``fd`` but its subdirectories; return their names."""
        subdirs: list[str] = []
        with os.scandir(fd) as entries:
            names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for name, is_dir in names:
            if is_dir:
                subdirs.append(name)
            else:
                self.retry_writable(fd, name, "unlink")
        return subdirs

    # --- the walk ---------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            parent = os.open(self.top.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            self.remove_in(parent, self.top.name)
        finally:
            os.close(parent)

    def remove_in(self, parent: int, name: str) -> None:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            self.retry_writable(parent, name, "unlink")
            return
        fd = self.open_dir(parent, name, st)
        if fd is None:
            return
        self.trail = [_Frame(name, st.st_dev, st.st_ino)]
        self.fd = fd
        try:
            self.walk()
        finally:
            os.close(self.fd)
        self.trail = []
        self.retry_writable(parent, name, "rmdir")

    def walk(self) -> None:
        """Empty the top directory; ``self.fd`` holds the directory the walk is in (the top at the end)."""
        while True:
            frame = self.trail[-1]
            if frame.subdirs is None:
                frame.subdirs = self.clear_files(self.fd)
            if frame.subdirs:
                name = frame.subdirs.pop()
                try:
                    st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    self.retry_writable(self.fd, name, "unlink")
                    continue
                child = self.open_dir(self.fd, name, st)
                if child is None:
                    continue
                os.close(self.fd)
                self.fd = child
                self.trail.append(_Frame(name, st.st_dev, st.st_ino))
                continue
            if len(self.trail) == 1:
                return
            self.up()
            self.trail.pop()
            self.retry_writable(self.fd, frame.name, "rmdir")

    def up(self) -> None:
        """Go from the directory held to its parent, which must be the one the walk came down from."""
        parent = self.trail[-2]
        try:
            up = os.open("..", DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            raise self.fail(self.trail[-1].name, f"cannot reopen its parent: {exc.strerror}") from None
        st = os.fstat(up)
        if (st.st_dev, st.st_ino) != (parent.dev, parent.ino):
            os.close(up)
            raise self.fail(self.trail[-1].name, "moved while being removed")
        os.close(self.fd)
        self.fd = up


def remove_at(dir_fd: int, name: str) -> None:
    """remove_tree for the entry ``name`` of the directory ``dir_fd``."""
    _Removal(Path(name)).remove_in(dir_fd, name)


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything below it; a missing path is fine, a symlink is removed itself.

    The directories above ``path`` are trusted; nothing from ``path`` down is followed. RemoveFailed
    (naming the entry) when something cannot go: what could be removed before it is gone.
    """
    _Removal(Path(path)).run()


def scan(path: Path | str) -> Iterator[os.stat_result]:
    """The lstat of every entry below ``path``, one directory descriptor held at a time. Directories
    of other mounts are listed but not entered; entries that vanish meanwhile are skipped, and a
    directory moved away during the walk ends it (it is for measuring a tree that may be in use)."""
    try:
        fd = os.open(path, DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return
    top = os.fstat(fd)
    trail: list[_Frame] = [_Frame("", top.st_dev, top.st_ino)]
    try:
        while True:
            frame = trail[-1]
            if frame.subdirs is None:
                frame.subdirs = []
                with os.scandir(fd) as entries:
                    for entry in entries:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        yield st
                        if stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev:
                            frame.subdirs.append(entry.name)
            if frame.subdirs:
                name = frame.subdirs.pop()
                if mount_root(name, fd):
                    continue
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError:  # gone, replaced by a link, or out of reach
                    continue
                st = os.fstat(child)
                os.close(fd)
                fd = child
                trail.append(_Frame(name, st.st_dev, st.st_ino))
                continue
            if len(trail) == 1:
                return
            up = os.open("..", DIR_FLAGS, dir_fd=fd)
            trail.pop()
            st = os.fstat(up)
            os.close(fd)
            fd = up
            if (st.st_dev, st.st_ino) != (trail[-1].dev, trail[-1].ino):
                return
    finally:
        os.close(fd)
