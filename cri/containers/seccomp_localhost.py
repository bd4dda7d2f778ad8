"""A Localhost seccomp profile: a JSON file on the node that the request names by its path.

The path is the client's: it may name a fifo (a read that blocks the gRPC worker forever), a device (an
open with side effects, a read that never ends), /proc or /sys (files that block or claim any size) or a
symlink to any of them. Only a regular file reached without following a final symlink, non-empty and
at most MAX_BYTES, is read, without blocking; anything else is INVALID_ARGUMENT.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

from calyx_base.errors import InvalidArgument
from cri import fields

MAX_BYTES = 1 << 20  # runtime/default is ~25 KB as JSON; kubelet's profiles are of that order


def load(ref: str) -> dict[str, Any]:
    fields.absolute_path("seccomp localhost profile", ref)
    data = _read(ref)
    try:
        profile = json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"seccomp profile {ref} is not JSON: {exc}") from None
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise InvalidArgument(f"seccomp profile {ref} is not a seccomp profile (no defaultAction)")
    return profile


def _read(ref: str) -> bytes:
    try:
        st = os.lstat(ref)
    except FileNotFoundError:
        raise InvalidArgument(f"seccomp profile {ref} does not exist") from None
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile {ref} cannot be read: {exc.strerror}") from None
    _check_file(ref, st)
    try:
        fd = os.open(ref, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        reason = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise InvalidArgument(f"seccomp profile {ref} cannot be opened: {reason}") from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            raise InvalidArgument(f"seccomp profile {ref} was replaced while it was opened")
        _check_file(ref, opened)
        chunks = []
        size = 0
        while size <= MAX_BYTES:
            try:
                chunk = os.read(fd, MAX_BYTES + 1 - size)
            except BlockingIOError:
                raise InvalidArgument(f"seccomp profile {ref} cannot be read without blocking") from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_BYTES:
            raise InvalidArgument(f"seccomp profile {ref} is larger than {MAX_BYTES} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile {ref} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _check_file(ref: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise InvalidArgument(f"seccomp profile {ref} is a symlink; name the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"seccomp profile {ref} is not a regular file")
    if not 0 < st.st_size <= MAX_BYTES:
        # /proc and /sys files claim 0 or 4096 bytes whatever they hold; an empty file is no profile
        raise InvalidArgument(f"seccomp profile {ref} has {st.st_size} bytes (1 to {MAX_BYTES} allowed)")
