"""The images subsystem: pulled images, their names, and the content under them.

Records live in the store (kind "image", keyed by image id = config digest) and in memory for fast
lookups. An image becomes visible only when its record is written, after every blob is verified and
every layer unpacked; blobs and layer dirs no record (and no pull in flight) needs are removed when an
image goes and at start, which is also when interrupted downloads and unpacks are cleaned up. A removal
that fails is logged, counted and retried (Cleanups), never a reason to fail RemoveImage or the start:
the image itself is gone, what is left is garbage. An image a container uses (ImageUsers: the container
records, a create in progress included) is not removed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from calyx_base import failpoints
from calyx_base.cleanups import Cleanups
from calyx_base.errors import FailedPrecondition, InvalidArgument, NotFound
from cri.config import ImagesConfig
from cri.images.auth import Credentials
from cri.images.content import ContentStore
from cri.images.flight import Flights
from cri.images.instruments import IMAGE_PULL_DURATION
from cri.images.layers import LayerStore
from cri.images.model import Image, ImageRecord
from cri.images.reference import ID_RE, Reference, parse
from cri.images.validate import InvalidImage, stored_record
from cri.store import Store
from sandbox import trees

if TYPE_CHECKING:
    from cri.images.pull import Puller

log = logging.getLogger("cri.images")

KIND = "image"


class ImageUsers(Protocol):
    """Who may be using an image (cri/containers/records.py's ContainerRecords)."""

    def uses_image(self, image_id: str) -> bool: ...


class ImageManager:
    def __init__(
        self, store: Store, root: Path, config: ImagesConfig, cleanups: Cleanups, users: ImageUsers
    ) -> None:
        # httpx logs every request at info and httpcore every socket step at debug: too much for a daemon.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)
        self.store = store
        self.root = root
        # The live section of the config: a SIGHUP reload replaces registries, pins and the pull timeout
        # in it (cri/reload.py), and they are read where they are used.
        self.config = config
        self.cleanups = cleanups
        self.users = users
        self.content = ContentStore(self.root)
        self.layers = LayerStore(self.root / "layers", config.max_layer_unpacked_bytes)
        self._puller: Puller | None = None
        self._puller_lock = threading.Lock()
        self.pulls: Flights[str] = Flights()
        self._lock = threading.RLock()
        self._records: dict[str, ImageRecord] = {}
        self._specs: dict[str, dict[str, Any]] = {}
        self._leases: list[set[str]] = []

    @property
    def puller(self) -> Puller:
        """Made on the first pull: the registry client (httpx and its ~30 modules, ~2 MB) is not loaded
        by a daemon that has not pulled yet."""
        with self._puller_lock:
            if self._puller is None:
                from cri.images.pull import Puller

                self._puller = Puller(self.content, self.layers, self.config)
            return self._puller

    # --- lifecycle ----------------------------------------------------------------------------------

    def recover(self) -> None:
        cleanups = self.cleanups
        ingest = sum(
            cleanups.attempt("blob", p.name, partial(trees.remove_tree, p)) for p in self.content.leftovers()
        )
        unpacks = sum(
            cleanups.attempt("layer", p.name, partial(trees.remove_tree, p)) for p in self.layers.leftovers()
        )
        have_blobs, have_layers = self.content.digests(), self.layers.chain_ids()
        with self._lock:
            for image_id, data in self.store.list(KIND).items():
                try:
                    record = stored_record(data, image_id)
                except InvalidImage as exc:
                    log.error(
                        "image record refused, dropping image",
                        extra={"image_id": image_id, "error": str(exc)},
                    )
                    self.store.delete(KIND, image_id)
                    continue
                missing = [b for b in record.blobs if b not in have_blobs]
                missing += [c for c in record.chain_ids if c not in have_layers]
                if missing:
                    log.warning(
                        "image content missing, dropping image", extra={"image": image_id, "missing": missing}
                    )
                    self.store.delete(KIND, image_id)
                    continue
                self._records[image_id] = record
            removed = self._collect_garbage()
        log.info(
            "images recovered",
            extra={
                "images": len(self._records),
                "ingest_removed": ingest,
                "unpacks_removed": unpacks,
                **removed,
            },
        )

    def close(self) -> None:
        pass

    # --- lookups ------------------------------------------------------------------------------------

    def _find(self, text: str) -> ImageRecord | None:
        """The record named by ``text``: id, unique id prefix, tag or digest reference."""
        with self._lock:
            if text in self._records:  # a full id, sha512 ones included
                return self._records[text]
            match = ID_RE.match(text)
            if match:
                return self._records.get(f"sha256:{match.group(1)}")
            hexpart = text.removeprefix("sha256:")
            if len(hexpart) >= 6 and all(c in "0123456789abcdef" for c in hexpart):
                found = [r for i, r in self._records.items() if i[7:].startswith(hexpart)]
                if len(found) == 1:
                    return found[0]
                if text.startswith("sha256:"):
                    return None
            ref = parse(text)
            return self._find_ref(ref)

    def _find_ref(self, ref: Reference) -> ImageRecord | None:
        for record in self._records.values():
            if ref.digest:
                if ref.with_digest(ref.digest) in record.repo_digests:
                    return record
                if ref.digest == record.manifest_digest and any(
                    d.startswith(ref.name + "@") for d in record.repo_digests
                ):
                    return record
            elif ref.tagged in record.repo_tags:
                return record
        return None

    def _image(self, record: ImageRecord, pinned: set[str] | None = None) -> Image:
        spec = self._specs.get(record.id)
        if spec is None:
            spec = json.loads(self.content.read(record.config_digest))
            self._specs[record.id] = spec
        if pinned is None:
            pinned = self._pinned_ids()
        return Image(
            id=record.id,
            repo_tags=list(record.repo_tags),
            repo_digests=list(record.repo_digests),
            size=record.size,
            config=dict(spec.get("config") or {}),
            layer_dirs=[self.layers.path(c) for c in record.chain_ids],
            spec=spec,
            manifest_digest=record.manifest_digest,
            pinned=record.id in pinned,
        )

    def _pinned_ids(self) -> set[str]:
        ids = set()
        for name in self.config.pinned:
            try:
                record = self._find(name)
            except InvalidArgument:
                continue
            if record is not None:
                ids.add(record.id)
        return ids

    def resolve(self, ref: str) -> Image:
        """The image named by ``ref`` (id, ``sha256:`` id, unique id prefix, tag or digest reference)."""
        with self._lock:
            record = self._find(ref)
            if record is None:
                raise NotFound(f"image {ref!r} not found", ref)
            return self._image(record)

    def status(self, ref: str) -> Image | None:
        try:
            return self.resolve(ref)
        except NotFound:
            return None

    def list(self, ref: str = "") -> list[Image]:
        with self._lock:
            if ref:
                image = self.status(ref)
                return [image] if image is not None else []
            pinned = self._pinned_ids()
            return [self._image(r, pinned) for r in sorted(self._records.values(), key=lambda r: r.pulled_at)]

    # --- pull ---------------------------------------------------------------------------------------

    def pull(self, text: str, creds: Credentials | None = None, deadline: float | None = None) -> str:
        """Pull ``text`` (a reference) and return the image id. Concurrent pulls of one name share one
        when they carry the same credentials (a pull with others, or none, must earn the image itself).
        Without a deadline from the client, the pull gets images.pull_timeout_seconds."""
        ref = parse(text)
        creds = creds or Credentials()
        if deadline is None:
            deadline = time.monotonic() + self.config.pull_timeout_seconds
        key = f"{ref} {creds.fingerprint}"
        return self.pulls.do(key, lambda: self._pull(ref, creds, deadline), deadline, what=str(ref))

    def _pull(self, ref: Reference, creds: Credentials, deadline: float | None) -> str:
        start = time.monotonic()
        lease: set[str] = set()
        with self._lock:
            self._leases.append(lease)
        try:
            record = self.puller.pull(ref, creds, deadline, lease)
            with self._lock:
                self._record(record)
        except BaseException:
            with self._lock:
                self._leases.remove(lease)
                self._collect_garbage()  # a failed pull leaves nothing behind
            IMAGE_PULL_DURATION.labels("error").observe(time.monotonic() - start)
            raise
        with self._lock:
            self._leases.remove(lease)
        IMAGE_PULL_DURATION.labels("ok").observe(time.monotonic() - start)
        log.info(
            "image pulled",
            extra={
                "image": str(ref),
                "image_id": record.id,
                "duration_ms": (time.monotonic() - start) * 1000,
            },
        )
        return record.id

    def _record(self, new: ImageRecord) -> None:
        """Make ``new`` visible; a tag it takes is moved off the image that had it. Memory changes
        only once the store has committed, so a failed write leaves both as they were."""
        changed: dict[str, ImageRecord] = {}
        for other in self._records.values():
            if other.id != new.id and any(t in new.repo_tags for t in other.repo_tags):
                changed[other.id] = dataclasses.replace(
                    other, repo_tags=[t for t in other.repo_tags if t not in new.repo_tags]
                )
        existing = self._records.get(new.id)
        if existing is not None:
            new.repo_tags = _merge(existing.repo_tags, new.repo_tags)
            new.repo_digests = _merge(existing.repo_digests, new.repo_digests)
            new.blobs = _merge(existing.blobs, new.blobs)
            new.pulled_at = existing.pulled_at
        changed[new.id] = new
        with self.store.transaction() as tx:
            for record in changed.values():
                tx.put(KIND, record.id, record.to_dict())
        self._records.update(changed)

    # --- remove -------------------------------------------------------------------------------------

    def remove(self, text: str) -> None:
        """Remove a name or an image. By id or digest: the image. By tag: that tag, and the image with
        its last tag. Unknown images are fine (kubelet retries removals); images in use are refused."""
        with self._lock:
            record = self._find(text)
            if record is None:
                return
            by_tag = False
            if not ID_RE.match(text) and not text.startswith("sha256:"):
                try:
                    ref = parse(text)
                    by_tag = not ref.digest and ref.tagged in record.repo_tags
                except InvalidArgument:
                    by_tag = False
            if by_tag and len(record.repo_tags) > 1:
                untagged = dataclasses.replace(
                    record, repo_tags=[t for t in record.repo_tags if t != parse(text).tagged]
                )
                self.store.put(KIND, record.id, untagged.to_dict())
                self._records[record.id] = untagged
                log.info("image untagged", extra={"image_id": record.id, "tag": text})
                return
            if self.users.uses_image(record.id):
                raise FailedPrecondition(f"image {text!r} is in use by a container", record.id)
            self.store.delete(KIND, record.id)
            del self._records[record.id]
            self._specs.pop(record.id, None)
            failpoints.hit("image.remove_after_record", image_id=record.id)
            removed = self._collect_garbage()
        log.info("image removed", extra={"image_id": record.id, **removed})

    def _needed(self) -> set[str]:
        """Blobs and chain ids some image or pull in flight needs (lock held)."""
        keep: set[str] = set()
        for record in self._records.values():
            keep.update(record.blobs)
            keep.update(record.chain_ids)
        for lease in self._leases:
            keep.update(lease)
        return keep

    def _collect_garbage(self) -> dict[str, int]:
        """Delete blobs and layer dirs that no image and no pull in flight needs (lock held); one that
        cannot go now is retried later."""
        keep = self._needed()
        blobs = [d for d in self.content.digests() if d not in keep]
        layers = [c for c in self.layers.chain_ids() if c not in keep]
        attempt = self.cleanups.attempt
        return {
            "blobs_removed": sum(
                attempt("blob", d, partial(self._collect, d, self.content.delete)) for d in blobs
            ),
            "layers_removed": sum(
                attempt("layer", c, partial(self._collect, c, self.layers.remove)) for c in layers
            ),
        }

    def _collect(self, name: str, delete: Callable[[str], None]) -> None:
        """Delete the blob or layer ``name`` unless something needs it (again: a retry may come after a
        pull that uses it)."""
        with self._lock:
            if name not in self._needed():
                delete(name)

    # --- usage --------------------------------------------------------------------------------------

    def fs_usage(self) -> tuple[Path, int, int]:
        """(mount point, bytes, inodes) of image content: blobs plus unpacked layers."""
        total, inodes = self.content.usage()
        for chain in self.layers.chain_ids():
            usage = self.layers.usage(chain)
            total += usage.bytes
            inodes += usage.inodes
        return self.root, total, inodes


def _merge(old: list[str], new: list[str]) -> list[str]:
    return old + [x for x in new if x not in old]
