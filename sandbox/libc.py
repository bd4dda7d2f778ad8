"""The C library, loaded once for the whole daemon (ctypes), and the error a failed call makes.

(cri/containers/exec_reaper.py runs as an isolated interpreter that imports nothing of Calyx: it keeps
a handle of its own.)
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

LIBC = ctypes.CDLL(None, use_errno=True)


def last_error(call: str, where: str | Path) -> OSError:
    """The OSError of a libc call that just failed: its errno, the call and what it was about."""
    err = ctypes.get_errno()
    return OSError(err, f"{call} {where}: {os.strerror(err)}")
