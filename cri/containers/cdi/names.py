"""CDI device names: ``vendor/class=name`` (the kind is ``vendor/class``) and the requests that carry them.

kubelet names CDI devices in ``ContainerConfig.CDI_devices``; device plugins of older kubelets put them in
container annotations ``cdi.k8s.io/<key>`` whose value is a comma-separated list of names. Both reach
the runtime from an untrusted client, so every name is checked against the CDI grammar before use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from calyx_base.errors import InvalidArgument

ANNOTATION_PREFIX = "cdi.k8s.io/"
# vendor and class: a letter first, a letter or digit last, letters, digits, "_", "-" and "." between.
_VENDOR_OR_CLASS = re.compile(r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
# device name: a letter or digit at both ends, ":" allowed between as well.
_DEVICE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?")
MAX_VENDOR = 253  # a DNS subdomain
MAX_CLASS = 63  # a DNS label
MAX_NAME = 253
MAX_REQUESTED = 256  # devices one container may ask for


@dataclass(frozen=True)
class QualifiedName:
    vendor: str
    device_class: str
    name: str

    @property
    def kind(self) -> str:
        return f"{self.vendor}/{self.device_class}"

    def __str__(self) -> str:
        return f"{self.kind}={self.name}"


def kind_problem(kind: str) -> str | None:
    """Why ``kind`` is not ``vendor/class``, or None when it is."""
    vendor, sep, device_class = kind.partition("/")
    if not sep:
        return f"kind {kind[:300]!r} is not vendor/class"
    if len(vendor) > MAX_VENDOR or not _VENDOR_OR_CLASS.fullmatch(vendor):
        return f"vendor {vendor[:300]!r} is not a valid CDI vendor name"
    if len(device_class) > MAX_CLASS or not _VENDOR_OR_CLASS.fullmatch(device_class):
        return f"class {device_class[:300]!r} is not a valid CDI class name"
    return None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a device of a kind, or None."""
    if len(name) > MAX_NAME or not _DEVICE.fullmatch(name):
        return f"device name {name[:300]!r} is not a valid CDI device name"
    return None


def parse(text: str) -> QualifiedName:
    """``vendor/class=name``; InvalidArgument naming the text and the reason otherwise."""
    kind, sep, name = text.partition("=")
    problem = None if sep else "it has no '=': a CDI device is named vendor.com/class=name"
    problem = problem or kind_problem(kind) or name_problem(name)
    if problem:
        raise InvalidArgument(f"CDI device {text[:300]!r} is not a qualified device name: {problem}")
    vendor, _, device_class = kind.partition("/")
    return QualifiedName(vendor, device_class, name)


def requested(field: Iterable[str], annotations: Mapping[str, str]) -> list[QualifiedName]:
    """The devices a container asks for: the CRI field first, then the ``cdi.k8s.io/*`` annotations in
    key order; a device named twice counts once."""
    texts: list[tuple[str, str]] = [(name, "CDI_devices") for name in field]
    for key in sorted(annotations):
        if not key.startswith(ANNOTATION_PREFIX):
            continue
        for item in annotations[key].split(","):
            if not item.strip():
                raise InvalidArgument(f"annotation {key}: an empty CDI device name in {annotations[key]!r}")
            texts.append((item.strip(), f"annotation {key}"))
    names: dict[QualifiedName, None] = {}
    for text, origin in texts:
        try:
            names[parse(text)] = None
        except InvalidArgument as exc:
            raise InvalidArgument(f"{origin}: {exc.message}") from None
        if len(names) > MAX_REQUESTED:
            raise InvalidArgument(f"more than {MAX_REQUESTED} CDI devices requested")
    return list(names)
