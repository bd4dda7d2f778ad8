"""Build OCI image content in memory: layer tarballs, image configs, manifests and indexes.

Tests need images whose every byte they control (malicious layers, whiteouts, zstd, users), so the
builder works from a list of entries rather than from a directory on disk. Output is deterministic
(fixed mtimes, sorted keys) so the same image always gets the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any

import zstandard

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MTIME = 1_700_000_000  # fixed so that layers are reproducible


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


@dataclass
class Entry:
    """One tar member. ``kind``: file, dir, symlink, link (hard link), char, block, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    target: str = ""  # symlink or hard link target
    major: int = 0
    minor: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)
    mtime: int = MTIME


def tar_bytes(entries: list[Entry]) -> bytes:
    """An uncompressed PAX tar of ``entries`` in the given order (names are used verbatim)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = e.mtime
            info.type = {
                "file": tarfile.REGTYPE,
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "link": tarfile.LNKTYPE,
                "char": tarfile.CHRTYPE,
                "block": tarfile.BLKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[e.kind]
            info.linkname = e.target
            info.devmajor, info.devminor = e.major, e.minor
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


@dataclass(frozen=True)
class Layer:
    blob: Blob  # what the registry serves (compressed or not)
    diff_id: str  # digest of the uncompressed tar


def make_layer(entries: list[Entry], compression: str = "gzip", docker: bool = False) -> Layer:
    raw = tar_bytes(entries)
    return layer_from_tar(raw, compression, docker)


def layer_from_tar(raw: bytes, compression: str = "gzip", docker: bool = False) -> Layer:
    if compression == "gzip":
        data = gzip.compress(raw, compresslevel=6, mtime=0)
        media = MEDIA_DOCKER_LAYER if docker else MEDIA_OCI_LAYER + "+gzip"
    elif compression == "zstd":
        data = zstandard.ZstdCompressor(level=3).compress(raw)
        media = MEDIA_OCI_LAYER + "+zstd"
    elif compression == "none":
        data = raw
        media = MEDIA_OCI_LAYER
    else:
        raise ValueError(f"unknown compression {compression!r}")
    return Layer(Blob(media, data), digest_of(raw))


@dataclass
class Image:
    """A single-platform image: config, layers and the manifest tying them together."""

    config: Blob
    layers: list[Layer]
    manifest: Blob

    @property
    def blobs(self) -> list[Blob]:
        return [self.config, *(layer.blob for layer in self.layers)]

    @property
    def id(self) -> str:
        return self.config.digest


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def make_image(
    layers: list[Layer],
    config: dict[str, Any] | None = None,
    arch: str = "amd64",
    docker: bool = False,
    labels: dict[str, str] | None = None,
) -> Image:
    """An image whose runtime config is ``config`` (Cmd, Env, User...)."""
    doc = {
        "architecture": arch,
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {**(config or {}), **({"Labels": labels} if labels else {})},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "calyx critest builder"}],
    }
    config_blob = Blob(MEDIA_DOCKER_CONFIG if docker else MEDIA_OCI_CONFIG, canonical(doc))
    manifest_type = MEDIA_DOCKER_MANIFEST if docker else MEDIA_OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config_blob.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    return Image(config_blob, layers, Blob(manifest_type, canonical(manifest)))


def make_index(images: dict[str, Image], docker: bool = False) -> Blob:
    """An index (or Docker manifest list) of ``images`` keyed by architecture."""
    media = MEDIA_DOCKER_LIST if docker else MEDIA_OCI_INDEX
    doc = {
        "schemaVersion": 2,
        "mediaType": media,
        "manifests": [
            img.manifest.descriptor(platform={"architecture": arch, "os": "linux"})
            for arch, img in sorted(images.items())
        ],
    }
    return Blob(media, canonical(doc))
