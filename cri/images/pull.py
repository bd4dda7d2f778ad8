"""One image pull: manifest (through an index when there is one), config, layers, unpacked layer dirs.

The pull tries each endpoint (mirrors, then the registry) until one serves the manifest, then takes
every blob from that endpoint. Every document is checked by cri/images/validate.py before any of it is
used, and each blob lands in the content store only once verified; layers already there are not
downloaded again, and concurrent downloads of one blob with the same credentials are shared. The
result is an ImageRecord that the caller (the image manager) records in the store; until then nothing
is visible.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from calyx_base import failpoints
from calyx_base.errors import CalyxError, DeadlineExceeded, FailedPrecondition, NotFound, Unavailable
from cri.config import ImagesConfig
from cri.images import registry as reg
from cri.images import validate
from cri.images.auth import Credentials, Unauthorized
from cri.images.content import ContentStore, DigestMismatch
from cri.images.flight import Flights
from cri.images.layers import LayerStore
from cri.images.model import ImageRecord
from cri.images.reference import Reference
from cri.images.validate import InvalidImage

log = logging.getLogger("cri.images.pull")

ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le"}
# Endpoint failures after which the next endpoint is worth a try (a mirror may be broken or hostile).
TRY_NEXT = (NotFound, Unavailable, Unauthorized, DigestMismatch, InvalidImage)
PROGRESS_EVERY_S = 2.0
PARALLEL_DOWNLOADS = 3


def host_arch() -> str:
    machine = platform.machine()
    return ARCH.get(machine, machine)


@dataclass
class Progress:
    image: str
    total: int = 0
    done: int = 0
    layers_total: int = 0
    layers_done: int = 0
    _last: float = field(default_factory=time.monotonic)

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            self.log("pull progress")

    def log(self, msg: str) -> None:
        log.info(
            msg,
            extra={
                "image": self.image,
                "bytes": self.done,
                "bytes_total": self.total,
                "layers": self.layers_done,
                "layers_total": self.layers_total,
            },
        )


class Puller:
    def __init__(self, content: ContentStore, layers: LayerStore, config: ImagesConfig) -> None:
        self.content = content
        self.layers = layers
        self.config = config
        self.downloads: Flights[None] = Flights()

    def pull(
        self, ref: Reference, creds: Credentials, deadline: float | None, lease: set[str]
    ) -> ImageRecord:
        failures: list[CalyxError] = []
        for endpoint in reg.endpoints(ref.domain, self.config):
            used = reg.credentials_for(endpoint, ref.domain, creds, self.config)
            client = reg.RegistryClient(endpoint, ref.path, used, deadline)
            try:
                return self._pull_from(client, ref, deadline, lease, used.fingerprint)
            except TRY_NEXT as exc:
                withheld = not creds.empty and not reg.given_for(endpoint, ref.domain, creds)
                if isinstance(exc, Unauthorized) and withheld:
                    exc.message += (
                        f" (the pull's credentials are for {creds.server_address or ref.domain!r}"
                        f" and were not sent to {endpoint.host})"
                    )
                log.info(
                    "endpoint failed", extra={"image": str(ref), "endpoint": str(endpoint), "error": str(exc)}
                )
                failures.append(exc)
            finally:
                client.close()
        last = failures[-1]
        if len(failures) > 1:
            last.message = "; ".join(str(f) for f in failures)
        raise last

    # --- one endpoint -------------------------------------------------------------------------------

    def _manifest(
        self, client: reg.RegistryClient, image: str, reference: str, expect: str = ""
    ) -> tuple[bytes, str, dict[str, Any]]:
        """A manifest or index: its body, digest (checked against ``expect``) and JSON object."""
        body, media = client.manifest(reference)
        digest = validate.digest_of(body, expect)
        if expect and digest != expect:
            raise DigestMismatch(f"manifest {reference}: content has digest {digest}, expected {expect}")
        doc = _json(body, f"image {image}: manifest {reference} from {client.endpoint}")
        if not isinstance(doc, dict):
            raise InvalidImage(
                f"image {image}: manifest {reference} from {client.endpoint} is not a JSON object"
            )
        media = str(doc.get("mediaType") or media)
        if doc.get("schemaVersion") == 1 or media in (
            validate.MEDIA_DOCKER_V1,
            validate.MEDIA_DOCKER_V1_SIGNED,
        ):
            raise FailedPrecondition(
                f"{client.repo}:{reference} is a Docker schema 1 image, which Calyx does not support"
                " (deprecated by Docker; re-push it as schema 2 or OCI)"
            )
        return body, digest, doc

    def _pick(self, entries: list[validate.IndexEntry], name: str) -> validate.Descriptor:
        arch = host_arch()
        for entry in entries:
            if entry.os == "linux" and entry.architecture == arch:
                if entry.descriptor.media_type not in validate.MANIFEST_TYPES:
                    raise InvalidImage(
                        f"image {name}: its linux/{arch} entry is a {entry.descriptor.media_type!r},"
                        " not an image manifest"
                    )
                return entry.descriptor
        offered = sorted(f"{e.os}/{e.architecture}" for e in entries)
        raise NotFound(f"{name} has no image for linux/{arch} (it has {', '.join(offered) or 'none'})")

    def _pull_from(
        self,
        client: reg.RegistryClient,
        ref: Reference,
        deadline: float | None,
        lease: set[str],
        creds_key: str,
    ) -> ImageRecord:
        image = str(ref)
        body, top_digest, doc = self._manifest(client, image, ref.object, ref.digest)
        blobs: list[str] = []
        if "manifests" in doc or doc.get("mediaType") in validate.INDEX_TYPES:
            chosen = self._pick(validate.index(doc, image), image)
            lease.add(top_digest)
            self.content.put(top_digest, body)
            blobs.append(top_digest)
            body, manifest_digest, doc = self._manifest(client, image, chosen.digest, chosen.digest)
        else:
            manifest_digest = top_digest
        manifest = validate.manifest(doc, image)
        lease.add(manifest_digest)
        self.content.put(manifest_digest, body)
        blobs.append(manifest_digest)
        failpoints.hit("image.pull_after_manifest", image=image)
        progress = Progress(image, total=sum(d.size for d in manifest.layers))
        progress.layers_total = len(manifest.layers)
        self._fetch(client, manifest.config, deadline, lease, None, creds_key)
        blobs.append(manifest.config.digest)
        config = _json(self.content.read(manifest.config.digest), f"image {image}: config")
        diff_ids = validate.config(config, image, len(manifest.layers))
        chains = validate.chain_ids(diff_ids)
        self._fetch_layers(client, manifest.layers, deadline, lease, progress, creds_key)
        failpoints.hit("image.pull_after_blobs", image=image)
        blobs.extend(desc.digest for desc in manifest.layers)
        lease.update(chains)
        layers = []
        for desc, diff_id, chain in zip(manifest.layers, diff_ids, chains, strict=True):
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(f"pull of {image}: deadline passed while unpacking")
            self.layers.ensure(chain, self.content.path(desc.digest), diff_id, desc.digest, deadline)
            layers.append({"digest": desc.digest, "diff_id": diff_id, "chain_id": chain, "size": desc.size})
        failpoints.hit("image.pull_after_unpack", image=image)
        progress.log("pull complete")
        return ImageRecord(
            id=manifest.config.digest,
            repo_tags=[ref.tagged] if ref.tag else [],
            repo_digests=[ref.with_digest(top_digest)],
            manifest_digest=manifest_digest,
            config_digest=manifest.config.digest,
            blobs=blobs,
            layers=layers,
            size=manifest.config.size + sum(d.size for d in manifest.layers),
            pulled_at=time.time_ns(),
        )

    def _fetch_layers(
        self,
        client: reg.RegistryClient,
        descs: list[validate.Descriptor],
        deadline: float | None,
        lease: set[str],
        progress: Progress,
        creds_key: str,
    ) -> None:
        """Download layers a few at a time (latency, not bandwidth, dominates pulls of many small
        layers). Leaving the pool waits for every download started, so nothing writes after a failure."""

        def one(desc: validate.Descriptor) -> None:
            self._fetch(client, desc, deadline, lease, progress, creds_key)
            progress.layers_done += 1

        with ThreadPoolExecutor(max_workers=PARALLEL_DOWNLOADS, thread_name_prefix="pull") as pool:
            futures = [pool.submit(one, desc) for desc in descs]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _fetch(
        self,
        client: reg.RegistryClient,
        desc: validate.Descriptor,
        deadline: float | None,
        lease: set[str],
        progress: Progress | None,
        creds_key: str,
    ) -> None:
        """Download one checked descriptor's blob unless the store has it. Downloads of one blob share a
        run only among pulls with the same credentials: one that may not read it never gets it."""
        digest, size = desc.digest, desc.size
        lease.add(digest)
        if self.content.has(digest, size):
            if progress is not None:
                progress.add(size)
            return

        def download() -> None:
            if self.content.has(digest, size):
                return
            with client.blob(digest) as chunks:
                self.content.write(digest, size, chunks, deadline, progress.add if progress else None)

        self.downloads.do(f"{digest} {creds_key}", download, deadline, what=f"blob {digest}")


def _json(body: bytes, what: str) -> Any:
    """JSON of a registry's document; InvalidImage when it is not (nesting too deep included)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidImage(f"{what} is not JSON") from None
