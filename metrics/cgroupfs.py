"""Small helpers shared by the v1 and v2 readers: read a cgroup file once, parse its common formats.

A cgroup can disappear between two reads (its container exited and runc deleted it); the helpers return
None for a file that is gone so that a reader can report what it did get.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# A limit at or above this is "no limit": v1 reports PAGE_COUNTER_MAX * page size (about 2**63).
UNLIMITED = 1 << 62


def read_text(path: str | Path) -> str | None:
    """The whole file, or None when it (or its cgroup) no longer exists."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENOTDIR):
            return None
        raise
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


def read_int(path: str | Path) -> int | None:
    """A file holding one integer; "max" (v2's unlimited) and a missing file give None."""
    text = read_text(path)
    if text is None:
        return None
    text = text.strip()
    if not text or text == "max":
        return None
    return int(text)


def read_keyed(path: str | Path) -> dict[str, int] | None:
    """A flat keyed file ("key value" per line: memory.stat, cpu.stat, memory.events...)."""
    text = read_text(path)
    if text is None:
        return None
    return parse_keyed(text)


def parse_keyed(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        value = value.strip()
        if key and value:
            try:
                values[key] = int(value)
            except ValueError:
                continue
    return values


def limit(value: int | None) -> int | None:
    """A byte/count limit, None when it means unlimited."""
    if value is None or value < 0 or value >= UNLIMITED:
        return None
    return value


def count_lines(path: str | Path) -> int | None:
    text = read_text(path)
    if text is None:
        return None
    return sum(1 for line in text.splitlines() if line.strip())
