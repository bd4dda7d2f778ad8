"""The image record: what the store keeps about a pulled image, and the ``Image`` other subsystems see."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Image:
    """A pulled image, as ``ImageManager.resolve()`` returns it.

    ``config`` is the OCI image config's "config" object (Entrypoint, Cmd, Env, User, WorkingDir,
    StopSignal, Labels, Volumes, ExposedPorts); ``layer_dirs`` are the unpacked layers, bottom first.
    """

    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    size: int
    config: dict[str, Any]
    layer_dirs: list[Path]
    spec: dict[str, Any] = field(default_factory=dict, compare=False)  # the whole image config document
    manifest_digest: str = ""
    pinned: bool = False

    @property
    def user(self) -> str:
        return str(self.config.get("User") or "")


@dataclass
class ImageRecord:
    """Persisted as kind "image" under the image id. Layers are (digest, diff id, chain id, size)."""

    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    manifest_digest: str
    config_digest: str
    blobs: list[str]  # every blob the image needs kept: index, manifest, config, layers
    layers: list[dict[str, Any]]
    size: int
    pulled_at: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})

    @property
    def chain_ids(self) -> list[str]:
        return [layer["chain_id"] for layer in self.layers]

    @property
    def names(self) -> list[str]:
        return [*self.repo_tags, *self.repo_digests]
