"""The CDI devices this node has: every spec file of the configured directories, re-read when it changes.

Each resolve lists the spec directories and stats their ``.json`` and ``.yaml`` files (a few system calls,
and only for containers that ask for CDI devices); a file whose inode, size or times changed is parsed
again, so a spec a device plugin writes or edits is used by the next CreateContainer, no restart needed.

Precedence, as the CDI spec has it: a device defined in a later directory replaces the one of an earlier
directory; the same device defined by two files of one directory is a conflict and cannot be used.
A file that cannot be used (unreadable, too big, malformed) is skipped, and a request for a device of
its kind names it and the reason.

Spec files are parsed defensively: at most MAX_SPEC_BYTES each, regular files only (a FIFO named
``x.json`` would block the reader), YAML nested at most MAX_DEPTH deep (the C composer recurses) and of
at most MAX_NODES values with its aliases expanded (a few anchors can stand for billions), and no path
in them is ever used to build one of Calyx's own paths.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from calyx_base.errors import InvalidArgument
from cri.containers.cdi import schema
from cri.containers.cdi.names import QualifiedName

log = logging.getLogger("cri.containers.cdi")

MAX_SPEC_BYTES = 1 << 20
MAX_FILES_PER_DIR = 1024
MAX_DEPTH = 32
MAX_NODES = 100_000
SUFFIXES = (".json", ".yaml")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_KIND_TEXT = re.compile(r"""(?m)(?:^kind|"kind")\s*:\s*["']?([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)""")


@dataclass(frozen=True)
class SpecFile:
    path: Path
    priority: int  # index of its directory: later directories win
    spec: schema.Spec


@dataclass(frozen=True)
class Device:
    """A resolved device: its name and the spec file that defines it."""

    name: QualifiedName
    source: SpecFile

    @property
    def edits(self) -> schema.Edits:
        return self.source.spec.devices[self.name.name]


@dataclass(frozen=True)
class Broken:
    path: Path
    reason: str
    kind: str | None  # the kind the file claims, when that much could be read


@dataclass
class _Index:
    devices: dict[QualifiedName, Device] = field(default_factory=dict)
    conflicts: dict[QualifiedName, list[Path]] = field(default_factory=dict)
    kinds: dict[str, list[SpecFile]] = field(default_factory=dict)
    broken: list[Broken] = field(default_factory=list)


Signature = tuple[int, int, int, int, int, int]


class Registry:
    def __init__(self, dirs: Sequence[str | Path]) -> None:
        self.dirs = [Path(d) for d in dirs]
        self._lock = threading.Lock()
        self._files: dict[Path, tuple[Signature, int, SpecFile | Broken]] = {}
        self._scan: list[tuple[Path, int, Signature]] | None = None
        self._index = _Index()

    def resolve(self, wanted: Sequence[QualifiedName]) -> list[Device]:
        """The devices named by ``wanted``, in order; InvalidArgument naming the device and the spec
        file when one is unknown, defined twice at the same precedence or in a file that is broken."""
        if not wanted:
            return []
        if not self.dirs:
            raise InvalidArgument(
                f"CDI device {wanted[0]} requested, but CDI is off (runtime.cdi_spec_dirs is empty)"
            )
        with self._lock:
            index = self._refresh()
        return [self._one(index, name) for name in wanted]

    def _one(self, index: _Index, name: QualifiedName) -> Device:
        if name in index.conflicts:
            files = " and ".join(str(p) for p in index.conflicts[name])
            raise InvalidArgument(
                f"CDI device {name} is defined by both {files}, in one directory: neither takes precedence"
            )
        device = index.devices.get(name)
        if device is not None:
            return device
        reasons = [
            f"no device {name.name!r} in {s.path} (devices: {', '.join(sorted(s.spec.devices))[:500]})"
            for s in index.kinds.get(name.kind, [])
        ]
        broken = [b for b in index.broken if b.kind in (None, name.kind)]
        reasons += [f"spec file {b.path} cannot be used: {b.reason}" for b in broken]
        if not reasons:
            dirs = ", ".join(str(d) for d in self.dirs)
            reasons = [f"no CDI spec in {dirs} defines kind {name.kind}"]
        raise InvalidArgument(f"CDI device {name} is unknown: {'; '.join(reasons)}")

    # --- loading ----------------------------------------------------------------------------------------

    def _refresh(self) -> _Index:
        scan = self._list()
        if scan == self._scan:
            return self._index
        files: dict[Path, tuple[Signature, int, SpecFile | Broken]] = {}
        for path, priority, signature in scan:
            known = self._files.get(path)
            if known is not None and known[:2] == (signature, priority):
                files[path] = known
                continue
            loaded = load(path, priority)
            if isinstance(loaded, Broken):
                log.warning("CDI spec file skipped", extra={"path": str(path), "reason": loaded.reason})
            else:
                log.info("CDI spec file loaded", extra={"path": str(path), "kind": loaded.spec.kind})
            files[path] = (signature, priority, loaded)
        self._files, self._scan = files, scan
        self._index = _build_index([entry for _, _, entry in files.values()])
        return self._index

    def _list(self) -> list[tuple[Path, int, Signature]]:
        """(path, priority, stat signature) of every candidate spec file, directories in order."""
        out: list[tuple[Path, int, Signature]] = []
        for priority, directory in enumerate(self.dirs):
            try:
                with os.scandir(directory) as entries:
                    candidates = sorted(e.name for e in entries if e.name.endswith(SUFFIXES))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                log.warning("CDI spec dir unreadable", extra={"path": str(directory), "error": str(exc)})
                continue
            if len(candidates) > MAX_FILES_PER_DIR:
                log.warning("too many CDI spec files, the rest ignored", extra={"path": str(directory)})
                candidates = candidates[:MAX_FILES_PER_DIR]
            for name in candidates:
                path = directory / name
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue
                signature = (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                out.append((path, priority, signature))
        return out


def _build_index(entries: list[SpecFile | Broken]) -> _Index:
    index = _Index()
    for entry in entries:  # directories in order, files in name order within each
        if isinstance(entry, Broken):
            index.broken.append(entry)
            continue
        vendor, _, device_class = entry.spec.kind.partition("/")
        index.kinds.setdefault(entry.spec.kind, []).append(entry)
        for device_name in entry.spec.devices:
            name = QualifiedName(vendor, device_class, device_name)
            other = index.devices.get(name)
            if other is not None and other.source.priority == entry.priority:
                index.conflicts.setdefault(name, [other.source.path]).append(entry.path)
            index.devices[name] = Device(name, entry)
    return index


def load(path: Path, priority: int) -> SpecFile | Broken:
    """Read and check one spec file."""
    try:
        text = _read(path)
    except (OSError, ValueError) as exc:
        return Broken(path, str(exc), None)
    try:
        document = json.loads(text) if path.suffix == ".json" else _yaml(text)
    except (ValueError, RecursionError, yaml.YAMLError) as exc:
        return Broken(path, f"not valid {path.suffix[1:].upper()}: {str(exc)[:500]}", _kind_in(text))
    kind = document.get("kind") if isinstance(document, dict) else None
    try:
        return SpecFile(path, priority, schema.parse(document))
    except schema.SpecError as exc:
        return Broken(path, str(exc), kind if isinstance(kind, str) else None)


def _kind_in(text: str) -> str | None:
    """The kind a file that does not parse seems to declare (so that only requests for that kind are
    told about it); None when it cannot be seen."""
    found = _KIND_TEXT.search(text)
    return found.group(1) if found else None


def _read(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SPEC_BYTES:
            chunk = os.read(fd, MAX_SPEC_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > MAX_SPEC_BYTES:
        raise ValueError(f"larger than {MAX_SPEC_BYTES} bytes")
    try:
        return b"".join(chunks).decode()
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


def _yaml(text: str) -> Any:
    """Safe YAML, refused before anything is built when nested deeper than MAX_DEPTH or larger than
    MAX_NODES once aliases are expanded (a few anchors can stand for billions of nodes)."""
    anchored: dict[str, int] = {}
    open_collections: list[list[Any]] = []  # [nodes so far, anchor] of each collection being read
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_collections) >= MAX_DEPTH:
                raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
            open_collections.append([1, event.anchor])
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            size, anchor = open_collections.pop()
        elif isinstance(event, yaml.AliasEvent):
            size, anchor = anchored.get(event.anchor, 1), None
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
        else:
            continue
        if anchor:
            anchored[anchor] = size
        if open_collections:
            open_collections[-1][0] += size
            if open_collections[-1][0] > MAX_NODES:
                raise ValueError(f"more than {MAX_NODES} values once its aliases are expanded")
    return yaml.load(text, Loader=_LOADER)
