"""Image references as kubelet and crictl send them, parsed and normalised the way containerd and CRI-O do.

``busybox`` -> ``docker.io/library/busybox:latest``; ``host:5000/a/b@sha256:...`` keeps its digest and
gets no default tag. Anything that is not a valid reference raises InvalidArgument, so a bad name
never reaches a registry or the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from calyx_base.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAINS = {"index.docker.io", "registry-1.docker.io"}
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_NAME = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"(?::[0-9]+)?\Z"
)
_IPV6_DOMAIN = re.compile(r"\[[0-9a-fA-F:]+\](?::[0-9]+)?\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}\Z|sha512:[a-f0-9]{128}\Z")
ID_RE = re.compile(r"(?:sha256:)?([a-f0-9]{64})\Z")


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``domain/path``: the repository, as repo tags and repo digests start."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def tagged(self) -> str:
        """``name:tag`` (empty when the reference has only a digest)."""
        return f"{self.name}:{self.tag}" if self.tag else ""

    def with_digest(self, digest: str) -> str:
        return f"{self.name}@{digest}"

    @property
    def object(self) -> str:
        """What to ask the registry for: the digest if there is one, else the tag."""
        return self.digest or self.tag


def parse(text: str) -> Reference:
    """Parse and normalise ``text``; InvalidArgument naming the reference and the reason if bad."""
    original = text
    if not text or text != text.strip():
        raise InvalidArgument(f"invalid image reference {original!r}: empty or surrounded by spaces")
    digest = ""
    if "@" in text:
        text, _, digest = text.partition("@")
        if not _DIGEST.match(digest):
            raise InvalidArgument(f"invalid image reference {original!r}: bad digest {digest!r}")
    tag = ""
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, _, tag = text.rpartition(":")
        if not _TAG.match(tag):
            raise InvalidArgument(f"invalid image reference {original!r}: bad tag {tag!r}")
    if not text:
        raise InvalidArgument(f"invalid image reference {original!r}: no repository name")
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, rest
        if not (_DOMAIN.match(domain) or _IPV6_DOMAIN.match(domain)):
            raise InvalidArgument(f"invalid image reference {original!r}: bad registry host {domain!r}")
    else:
        domain, path = DEFAULT_DOMAIN, text
    if domain in LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            raise InvalidArgument(
                f"invalid image reference {original!r}: bad repository component {component!r}"
                " (lowercase letters, digits and separators . _ __ - only)"
            )
    if len(f"{domain}/{path}") > MAX_NAME:
        raise InvalidArgument(f"invalid image reference {original!r}: name longer than {MAX_NAME}")
    if not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def normalise_id(text: str) -> str | None:
    """``sha256:<hex>`` if ``text`` is a full image id (with or without the prefix), else None."""
    match = ID_RE.match(text)
    return f"sha256:{match.group(1)}" if match else None
