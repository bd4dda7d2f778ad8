"""What an unprivileged host user can do with Calyx's files: run as that user, report as JSON.

``python3 perm_probe.py '{"walk": [dirs], "reach": [paths], "write": [dirs]}'`` (the tests pass this
file's text to ``python3 -c`` under ``runuser``/``setpriv``, so it imports nothing of the project):

- ``walk``: every dir it can list below these (recursively) and every file it can open for reading;
- ``reach``: which of these paths it can stat (every dir above them is passable) and which it can read
  (list a dir, open a file);
- ``write``: in which of these dirs it can create a file (removed at once).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from typing import Any


def _readable(path: str, st: os.stat_result) -> bool:
    try:
        if stat.S_ISDIR(st.st_mode):
            os.listdir(path)
            return True
        if stat.S_ISREG(st.st_mode):
            # O_NONBLOCK: a fifo must not hold the probe
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            os.close(fd)
            return True
    except OSError:
        return False
    return False


def walk(roots: list[str]) -> tuple[list[str], list[str]]:
    listed: list[str] = []
    read: list[str] = []
    todo = list(roots)
    while todo:
        directory = todo.pop()
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        listed.append(directory)
        for name in names:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                todo.append(path)
            elif _readable(path, st):
                read.append(path)
    return sorted(listed), sorted(read)


def reach(paths: list[str]) -> tuple[list[str], list[str]]:
    reached: list[str] = []
    read: list[str] = []
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        reached.append(path)
        if _readable(path, st):
            read.append(path)
    return reached, read


def write(dirs: list[str]) -> list[str]:
    wrote = []
    for directory in dirs:
        probe = os.path.join(directory, f".probe-{os.getpid()}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:
            continue
        os.close(fd)
        os.unlink(probe)
        wrote.append(directory)
    return wrote


def main(request: dict[str, Any]) -> dict[str, Any]:
    listed, read = walk(request.get("walk", []))
    reached, reached_read = reach(request.get("reach", []))
    return {
        "uid": os.getuid(),
        "listed": listed,
        "read": read,
        "reached": reached,
        "reached_read": reached_read,
        "wrote": write(request.get("write", [])),
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
