"""The container_* families in the Prometheus text format, written directly and reused across scrapes.

What prometheus-client's ``generate_latest`` makes of ``collector.families``, byte for byte: the
container_* series are most of a scrape (~50 per container), and prometheus-client builds a Sample and
a label dict for each, then validates, sorts and escapes every label again. Here each series line is a
prefix (name and labels, in generate_latest's order: sorted by label name) plus the value.

Between two scrapes most lines do not change (limits, start times, the cached writable-layer usage, an
idle pod's network), and the label part of a line never changes while its labels stay the same. A
``LineCache`` keeps the lines of the previous scrape by label set, family and value: a line whose
value is unchanged is reused as it is, one whose value changed keeps its prefix. The cache holds only
what the latest scrape rendered, so a container or pod that went away leaves it at the next scrape.
Its price is memory: about the text of one scrape and as much again in bookkeeping (~5 MB for 100 pods
with 200 containers here), for a render ~3x faster (~50 ms -> ~15 ms for those).
"""

from __future__ import annotations

from prometheus_client.utils import floatToGoString

from cri.stats.families import FAMILIES, Family
from cri.stats.model import ContainerSample, PodSample, PromLabels

# (family name, the family's own label values) -> (value, whole line)
SubjectLines = dict[tuple[str, tuple[str, ...]], tuple[float, str]]


class LineCache:
    """The series lines of the latest scrape, by label set. Scrapes may run concurrently: each reads
    the map the previous one left and publishes a new one (a reference swap), never mutating it."""

    def __init__(self) -> None:
        self.lines: dict[PromLabels, SubjectLines] = {}


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _header(family: Family) -> str:
    """HELP and TYPE lines as the text format has them (counters named with their _total)."""
    kind = "counter" if family.counter and family.name.endswith("_total") else "gauge"
    doc = family.help.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {family.name} {doc}\n# TYPE {family.name} {kind}\n"


def _prefix_format(family: Family) -> str:
    """A str.format template of a series line up to its value: labels sorted by name as generate_latest
    sorts them, each filled from its position in (base labels + the family's own)."""
    names = family.label_names
    order = sorted(range(len(names)), key=lambda i: names[i])
    labels = ",".join(f'{names[i]}="{{{i}}}"' for i in order)
    name = family.name.replace("{", "{{").replace("}", "}}")
    return f"{name}{{{{{labels}}}}} "


_FORMATS = {family.name: (_header(family), _prefix_format(family)) for family in FAMILIES}


def families_text(pods: list[PodSample], cache: LineCache | None = None) -> str:
    """The container_* families of ``pods`` in the Prometheus text format (as ``collector.families``
    gives them to prometheus-client): pod-level series, then running containers', family by family.
    With ``cache``, lines of the previous scrape are reused and this scrape's are kept."""
    previous = cache.lines if cache is not None else {}
    current: dict[PromLabels, SubjectLines] = {}
    lines: dict[str, list[str]] = {family.name: [] for family in FAMILIES}
    for pod in pods:
        subjects: list[ContainerSample | PodSample] = [pod]
        subjects.extend(c for c in pod.containers if c.cgroup is not None)
        for subject in subjects:
            old = previous.get(subject.prom, {})
            new: SubjectLines = {}
            base: tuple[str, ...] | None = None
            for family in FAMILIES:
                out = lines[family.name]
                for extra, value in family.values(subject):
                    key = (family.name, extra)
                    known = old.get(key)
                    if known is not None and known[0] == value:
                        line = known[1]
                    elif known is not None:  # the labels are the same: keep the line's prefix
                        line = f"{known[1][: known[1].rindex(' ') + 1]}{floatToGoString(value)}\n"
                    else:
                        if base is None:
                            base = tuple(_escape(v) for v in subject.prom.values())
                        labels = base + tuple(_escape(v) for v in extra) if extra else base
                        line = f"{_FORMATS[family.name][1].format(*labels)}{floatToGoString(value)}\n"
                    new[key] = (value, line)
                    out.append(line)
            current[subject.prom] = new
    if cache is not None:
        cache.lines = current
    parts: list[str] = []
    for family in FAMILIES:
        parts.append(_FORMATS[family.name][0])
        parts.extend(lines[family.name])
    return "".join(parts)
