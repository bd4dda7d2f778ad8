"""Everything a registry sends is untrusted: its digests, media types, sizes and URLs, and the manifests,
indexes and image configs made of them, are checked here against the OCI grammar before Calyx uses any
of it (to name a file, to build a URL, to size a read, to start a container).

A bad value raises InvalidImage naming the image, the document and the field (``layers[1].digest``); the
value is shortened in the message, which ends up in kubelet's events and may have been megabytes long.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from calyx_base.errors import FailedPrecondition
from cri.images.model import ImageRecord

# Digest algorithms Calyx verifies, with the length of their lowercase hex encoding.
ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})\Z")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}\Z")
# RFC 6838 section 4.2: type "/" subtype, each a restricted-name of 1 to 127 characters.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\Z")

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"
MEDIA_DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MANIFEST_TYPES = frozenset({MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST})
INDEX_TYPES = frozenset({MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST})
CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
    }
)

# Caps on what is read into memory or onto disk because a registry said so.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest or an index (containerd reads no more either)
MAX_CONFIG_BYTES = 8 * 1024 * 1024  # an image config: JSON of a few KB in practice
MAX_TOKEN_BYTES = 1024 * 1024  # a token server's reply: a JWT of a few KB
MAX_ERROR_BYTES = 16 * 1024  # what of an error body is read, for the message; the rest is dropped
MAX_BLOB_BYTES = 1 << 40  # one layer: no node holds a terabyte layer, and sums stay far from 2**63
MAX_LAYERS = 500  # overlayfs stacks at most 500 lower dirs
MAX_URL = 2048
MAX_SHOWN = 80


class InvalidImage(FailedPrecondition):
    """The registry sent an image that breaks the OCI grammar (or Calyx's caps); nothing of it is used."""


def shown(value: object) -> str:
    """``value`` for a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def is_digest(value: object) -> bool:
    """``algorithm:hex`` of a supported algorithm, with the hex of its length, lowercase."""
    return isinstance(value, str) and bool(_DIGEST.match(value))


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and bool(_SHA256.match(value))


def split(digest: str) -> tuple[str, str]:
    """(algorithm, hex) of a digest already checked with ``is_digest``; ValueError otherwise, so that no
    caller can build a path from anything else."""
    if not is_digest(digest):
        raise ValueError(f"not a digest: {shown(digest)}")
    algorithm, _, hexd = digest.partition(":")
    return algorithm, hexd


def hasher(digest: str) -> Any:
    """A fresh hash object of ``digest``'s algorithm."""
    return hashlib.new(split(digest)[0])


def digest_of(data: bytes, like: str = "") -> str:
    """The digest of ``data`` in the algorithm of ``like`` (sha256 when empty)."""
    algorithm = split(like)[0] if like else "sha256"
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).

    Only sha256 diff ids (what an unpacker computes and checks, as containerd does) make chain ids;
    anything else raises, so that a layer directory is only ever named by a verified chain."""
    chains: list[str] = []
    for i, diff_id in enumerate(diff_ids):
        if not is_sha256(diff_id):
            raise InvalidImage(f"diff id {i} {shown(diff_id)} is not a sha256 digest")
        if not chains:
            chains.append(diff_id)
        else:
            chains.append("sha256:" + hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest())
    return chains


class Checker:
    """Checks one document (``what``: "manifest", "index", "config") of one image."""

    def __init__(self, image: str, what: str) -> None:
        self.image = image
        self.what = what

    def fail(self, field: str, value: object, reason: str) -> InvalidImage:
        return InvalidImage(f"image {self.image}: {self.what} {field} {shown(value)} {reason}", self.image)

    def mapping(self, value: object, field: str, required: bool = True) -> dict[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(field, value, "is not a JSON object")
        return value

    def array(self, value: object, field: str, required: bool = True) -> list[Any]:
        if value is None and not required:
            return []
        if not isinstance(value, list):
            raise self.fail(field, value, "is not a JSON array")
        return value

    def text(self, value: object, field: str, required: bool = False) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str) or "\0" in value:
            raise self.fail(field, value, "is not a string (without NUL)")
        return value

    def texts(self, value: object, field: str) -> list[str]:
        return [self.text(v, f"{field}[{i}]", True) for i, v in enumerate(self.array(value, field, False))]

    def text_map(self, value: object, field: str) -> dict[str, str]:
        found = self.mapping(value, field, required=False)
        return {self.text(k, field, True): self.text(v, f"{field}[{k!r}]", True) for k, v in found.items()}

    def digest(self, value: object, field: str) -> str:
        if not is_digest(value):
            raise self.fail(field, value, "is not a digest (sha256:<64 hex> or sha512:<128 hex>, lowercase)")
        return str(value)

    def size(self, value: object, field: str, cap: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail(field, value, "is not a non-negative integer")
        if value > cap:
            raise self.fail(field, value, f"is over the {cap} bytes Calyx accepts")
        return value

    def media_type(self, value: object, field: str, accepted: frozenset[str] | None) -> str:
        if not isinstance(value, str) or not _MEDIA_TYPE.match(value):
            raise self.fail(field, value, "is not a media type (RFC 6838 type/subtype)")
        if accepted is not None and value not in accepted:
            raise self.fail(
                field, value, f"is not a media type Calyx accepts here ({', '.join(sorted(accepted))})"
            )
        return value

    def url(self, value: object, field: str) -> str:
        try:
            return url(value)
        except ValueError as exc:
            raise self.fail(field, value, str(exc)) from None

    def descriptor(self, value: object, field: str, accepted: frozenset[str] | None, cap: int) -> Descriptor:
        desc = self.mapping(value, field)
        for i, link in enumerate(self.array(desc.get("urls"), f"{field}.urls", required=False)):
            self.url(link, f"{field}.urls[{i}]")
        self.text_map(desc.get("annotations"), f"{field}.annotations")
        return Descriptor(
            self.media_type(desc.get("mediaType"), f"{field}.mediaType", accepted),
            self.digest(desc.get("digest"), f"{field}.digest"),
            self.size(desc.get("size"), f"{field}.size", cap),
        )


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: list[Descriptor]


@dataclass(frozen=True)
class IndexEntry:
    descriptor: Descriptor
    os: str
    architecture: str


def _schema_version(check: Checker, doc: dict[str, Any]) -> None:
    version = doc.get("schemaVersion")
    if version != 2 or isinstance(version, bool):
        raise check.fail("schemaVersion", version, "is not 2")


def manifest(doc: object, image: str) -> Manifest:
    """An image manifest (OCI or Docker schema 2): its config and layer descriptors, checked."""
    check = Checker(image, "manifest")
    body = check.mapping(doc, "document")
    _schema_version(check, body)
    if body.get("mediaType") is not None:
        check.media_type(body.get("mediaType"), "mediaType", MANIFEST_TYPES)
    layers = check.array(body.get("layers"), "layers")
    if len(layers) > MAX_LAYERS:
        raise check.fail(
            "layers", f"{len(layers)} layers", f"are more than the {MAX_LAYERS} overlayfs stacks"
        )
    return Manifest(
        check.descriptor(body.get("config"), "config", CONFIG_TYPES, MAX_CONFIG_BYTES),
        [check.descriptor(d, f"layers[{i}]", LAYER_TYPES, MAX_BLOB_BYTES) for i, d in enumerate(layers)],
    )


def index(doc: object, image: str) -> list[IndexEntry]:
    """An image index (or Docker manifest list): every entry checked, whatever platform it is for."""
    check = Checker(image, "index")
    body = check.mapping(doc, "document")
    _schema_version(check, body)
    if body.get("mediaType") is not None:
        check.media_type(body.get("mediaType"), "mediaType", INDEX_TYPES)
    entries = []
    for i, entry in enumerate(check.array(body.get("manifests"), "manifests")):
        field = f"manifests[{i}]"
        desc = check.descriptor(entry, field, None, MAX_MANIFEST_BYTES)
        platform = check.mapping(entry.get("platform"), f"{field}.platform", required=False)
        entries.append(
            IndexEntry(
                desc,
                check.text(platform.get("os"), f"{field}.platform.os"),
                check.text(platform.get("architecture"), f"{field}.platform.architecture"),
            )
        )
    return entries


# Fields of the image config's "config" object that containers are built from, and their JSON types.
_CONFIG_STRINGS = ("User", "WorkingDir", "StopSignal")
_CONFIG_LISTS = ("Entrypoint", "Cmd", "Env")
_CONFIG_OBJECTS = ("Volumes", "ExposedPorts")


def config(doc: object, image: str, layers: int) -> list[str]:
    """An image config: its diff ids (one sha256 per layer of the manifest), and the runtime fields
    containers are built from, each of its JSON type."""
    check = Checker(image, "config")
    body = check.mapping(doc, "document")
    rootfs = check.mapping(body.get("rootfs"), "rootfs")
    if rootfs.get("type") != "layers":
        raise check.fail("rootfs.type", rootfs.get("type"), 'is not "layers"')
    diff_ids = check.array(rootfs.get("diff_ids"), "rootfs.diff_ids")
    for i, diff_id in enumerate(diff_ids):
        if not is_sha256(diff_id):
            raise check.fail(
                f"rootfs.diff_ids[{i}]", diff_id, "is not a sha256 digest (sha256:<64 lowercase hex>)"
            )
    if len(diff_ids) != layers:
        raise check.fail(
            "rootfs.diff_ids", f"{len(diff_ids)} diff ids", f"for the manifest's {layers} layers"
        )
    runtime = check.mapping(body.get("config"), "config", required=False)
    for name in _CONFIG_STRINGS:
        check.text(runtime.get(name), f"config.{name}")
    for name in _CONFIG_LISTS:
        check.texts(runtime.get(name), f"config.{name}")
    for name in _CONFIG_OBJECTS:
        check.mapping(runtime.get(name), f"config.{name}", required=False)
    check.text_map(runtime.get("Labels"), "config.Labels")
    return [str(d) for d in diff_ids]


def url(value: object) -> str:
    """An absolute http(s) URL with a host and no user info; ValueError saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError("is not a string")
    if len(value) > MAX_URL:
        raise ValueError(f"is longer than {MAX_URL} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ValueError("holds spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("is not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("is not an http or https URL")
    if not parts.hostname:
        raise ValueError("names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("carries user info")
    return value


def stored_record(data: object, image_id: str) -> ImageRecord:
    """An image record read back from the store, held to the same grammar as a pull: a damaged or old
    record is refused (the caller drops it), never turned into a path outside the stores. Its chain ids
    must be the ones its diff ids make."""
    check = Checker(image_id, "stored record")
    body = check.mapping(data, "document")
    layers = []
    for i, layer in enumerate(check.array(body.get("layers"), "layers")):
        field = f"layers[{i}]"
        entry = check.mapping(layer, field)
        layers.append(
            {
                "digest": check.digest(entry.get("digest"), f"{field}.digest"),
                "diff_id": check.digest(entry.get("diff_id"), f"{field}.diff_id"),
                "chain_id": check.digest(entry.get("chain_id"), f"{field}.chain_id"),
                "size": check.size(entry.get("size"), f"{field}.size", MAX_BLOB_BYTES),
            }
        )
    try:
        chains = chain_ids([str(layer["diff_id"]) for layer in layers])
    except InvalidImage as exc:
        raise check.fail("layers", "diff ids", str(exc)) from None
    if chains != [layer["chain_id"] for layer in layers]:
        raise check.fail("layers", "chain ids", "are not the chain ids of its diff ids")
    record = ImageRecord(
        id=check.digest(body.get("id"), "id"),
        repo_tags=check.texts(body.get("repo_tags"), "repo_tags"),
        repo_digests=check.texts(body.get("repo_digests"), "repo_digests"),
        manifest_digest=check.digest(body.get("manifest_digest"), "manifest_digest"),
        config_digest=check.digest(body.get("config_digest"), "config_digest"),
        blobs=[check.digest(b, f"blobs[{i}]") for i, b in enumerate(check.array(body.get("blobs"), "blobs"))],
        layers=layers,
        size=check.size(body.get("size"), "size", 1 << 62),
        pulled_at=check.size(body.get("pulled_at"), "pulled_at", 1 << 62),
    )
    if record.id != image_id or record.config_digest != image_id:
        raise check.fail("id", record.id, f"is not the key it is stored under ({image_id})")
    return record
