"""Process identity that survives PID reuse: a PID plus its start time (clock ticks since boot)."""

from __future__ import annotations

from pathlib import Path


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None when no such process exists (or it is a zombie)."""
    if pid <= 0:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state); start time is field 22.
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


def alive(pid: int, started: int | None) -> bool:
    """The process ``pid`` that started at ``started`` still runs (not a later process with its PID)."""
    now = start_time(pid)
    return now is not None and (started is None or now == started)
