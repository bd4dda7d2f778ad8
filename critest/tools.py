"""Where the upstream CRI tools (crictl, critest from a cri-tools release) are found, and what a run
does when they are not: CI must have them, a developer's machine may lack them.

They are not Debian packages and are never copied into the project: a path given on the command line,
then ``$CRICTL`` / ``$CRITEST``, then PATH, then ``../shared/tools/`` beside the checkout (where the
project's machines and CI keep v1.36).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_TOOLS = REPO.parent / "shared" / "tools"


def in_ci() -> bool:
    """CI sets CI=true (.ci/run does too): there a missing tool fails the run instead of skipping."""
    return os.environ.get("CI", "").strip().lower() == "true"


def find_tool(name: str, explicit: str | None = None) -> str | None:
    """The executable ``name`` (crictl or critest): ``explicit`` if given, else ``$NAME``, PATH, then
    ../shared/tools/. A path given explicitly (argument or variable) is not replaced by another."""
    wanted = explicit or os.environ.get(name.upper())
    if wanted:
        return wanted if os.path.isfile(wanted) and os.access(wanted, os.X_OK) else None
    on_path = shutil.which(name)
    if on_path:
        return on_path
    shared = SHARED_TOOLS / name
    return str(shared) if shared.is_file() and os.access(shared, os.X_OK) else None


def where_looked(name: str, explicit: str | None = None) -> str:
    """Where ``find_tool`` looked, for the message saying it found nothing."""
    if explicit:
        return explicit
    if os.environ.get(name.upper()):
        return f"${name.upper()}={os.environ[name.upper()]}"
    return f"PATH and {SHARED_TOOLS / name}"
