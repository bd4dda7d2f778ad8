"""What execve takes, checked before runc is asked to run a command (container or exec).

Each argv or environment string is at most MAX_ARG_STRLEN bytes with its NUL, all of them together
(with their pointers) at most ARG_MAX, the program path at most PATH_MAX. Past these the command cannot
run anyway (E2BIG, ENAMETOOLONG), and worse, runc fails with an error quoting the path twice: past the
64 KiB of a pipe, runc and conmon deadlock on it and CreateContainer hung for conmon's whole timeout,
leaving both running (measured with runc 1.1.5 and conmon 2.1.6, a 60 KB program path). Refused with
INVALID_ARGUMENT instead.
"""

from __future__ import annotations

import os

from calyx_base.errors import InvalidArgument

MAX_ARG_STRLEN = 32 * 4096  # include/uapi/linux/binfmts.h: PAGE_SIZE * 32
PATH_MAX = 4096
POINTER = 8


def arg_max() -> int:
    try:
        return int(os.sysconf("SC_ARG_MAX"))
    except (ValueError, OSError):
        return 2 * 1024 * 1024


def check(argv: list[str], env: list[str], what: str, object_id: str | None = None) -> None:
    """InvalidArgument naming ``what`` (e.g. "the container's command") unless execve can take it."""
    if argv and len(argv[0].encode(errors="surrogateescape")) >= PATH_MAX:
        raise InvalidArgument(f"{what}: the program path is longer than {PATH_MAX - 1} bytes", object_id)
    total = 0
    for kind, strings in (("argument", argv), ("environment entry", env)):
        for index, text in enumerate(strings):
            size = len(text.encode(errors="surrogateescape")) + 1
            if size > MAX_ARG_STRLEN:
                limit = f"more than the kernel's {MAX_ARG_STRLEN}"
                raise InvalidArgument(f"{what}: {kind} {index} is {size} bytes, {limit}", object_id)
            total += size + POINTER
    if total > arg_max():
        limit = f"more than ARG_MAX ({arg_max()})"
        raise InvalidArgument(f"{what}: arguments and environment take {total} bytes, {limit}", object_id)
