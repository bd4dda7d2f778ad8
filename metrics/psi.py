"""Pressure stall information (PSI) of a cgroup: ``cpu.pressure``, ``memory.pressure``, ``io.pressure``.

These files exist in every cgroup v2 directory when the kernel tracks pressure, also on a hybrid host
whose cgroup2 mount carries no controller: tasks are accounted wherever they sit in that hierarchy,
and runc puts a container in it too. A file that is missing (PSI off, cgroup gone) is left out.
"""

from __future__ import annotations

from metrics.cgroupfs import read_text
from metrics.readings import PsiLine, PsiReading

RESOURCES = ("cpu", "memory", "io")


def parse_line(line: str) -> tuple[str, PsiLine] | None:
    """``some avg10=0.00 avg60=0.00 avg300=0.00 total=0`` -> ("some", PsiLine)."""
    kind, _, rest = line.partition(" ")
    fields = dict(part.split("=", 1) for part in rest.split() if "=" in part)
    try:
        return kind, PsiLine(
            avg10=float(fields["avg10"]),
            avg60=float(fields["avg60"]),
            avg300=float(fields["avg300"]),
            total_ns=int(fields["total"]) * 1000,
        )
    except (KeyError, ValueError):
        return None


def parse(text: str) -> PsiReading | None:
    lines = dict(p for p in (parse_line(line) for line in text.splitlines() if line.strip()) if p)
    some = lines.get("some")
    if some is None:
        return None
    return PsiReading(some=some, full=lines.get("full"))


def read_pressure(directory: str) -> dict[str, PsiReading]:
    """PSI of the cgroup v2 directory ``directory`` by resource."""
    found: dict[str, PsiReading] = {}
    for resource in RESOURCES:
        try:
            text = read_text(f"{directory}/{resource}.pressure")
        except OSError:  # EOPNOTSUPP: the kernel was booted with psi=0
            continue
        if text is None:
            continue
        reading = parse(text)
        if reading is not None:
            found[resource] = reading
    return found
