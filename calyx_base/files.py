"""Files replaced whole: a reader (a container bind-mounting the pod's hosts file, recovery reading a
container's state.json after a crash) sees the old content or the new, never a half-written file.

They are root's alone (0600) unless the caller says otherwise: they hold env values from Secrets,
registry results, pids (see cri/statedirs.py)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_text(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # before anything is written
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
