"""One image pull: manifest (through an index when there is one), config, layers, unpacked layer dirs.

The pull tries each endpoint (mirrors, then the registry) until one serves the manifest, then takes
every blob from that endpoint. Each blob lands in the content store only once verified; layers already
there are not downloaded again, and concurrent downloads of one blob are shared. The result is an
ImageRecord that the caller (the image manager) records in the store; until then nothing is visible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cri import failpoints
from cri.config import ImagesConfig
from cri.errors import CalyxError, DeadlineExceeded, FailedPrecondition, NotFound, Unavailable
from cri.images import registry as reg
from cri.images.auth import Credentials, Unauthorized
from cri.images.content import ContentStore, DigestMismatch
from cri.images.flight import Flights
from cri.images.layers import LayerStore, chain_ids
from cri.images.model import ImageRecord
from cri.images.reference import Reference

log = logging.getLogger("cri.images.pull")

ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le"}
INDEX_TYPES = {reg.MEDIA_OCI_INDEX, reg.MEDIA_DOCKER_LIST}
SCHEMA1_TYPES = {reg.MEDIA_DOCKER_V1, reg.MEDIA_DOCKER_V1_SIGNED, "application/json"}
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
}
# Endpoint failures after which the next endpoint is worth a try.
TRY_NEXT = (NotFound, Unavailable, Unauthorized, DigestMismatch)
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
            client = reg.RegistryClient(
                endpoint, ref.path, reg.credentials_for(endpoint, ref.domain, creds, self.config), deadline
            )
            try:
                return self._pull_from(client, ref, deadline, lease)
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
        self, client: reg.RegistryClient, reference: str, expect: str = ""
    ) -> tuple[bytes, str, dict[str, Any]]:
        body, media = client.manifest(reference)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if expect and digest != expect:
            raise DigestMismatch(f"manifest {reference}: content has digest {digest}, expected {expect}")
        try:
            doc = json.loads(body)
        except ValueError:
            raise Unavailable(f"manifest {reference} from {client.endpoint} is not JSON") from None
        if not isinstance(doc, dict):
            raise Unavailable(f"manifest {reference} from {client.endpoint} is not a JSON object")
        media = str(doc.get("mediaType") or media)
        if doc.get("schemaVersion") == 1 or media in (reg.MEDIA_DOCKER_V1, reg.MEDIA_DOCKER_V1_SIGNED):
            raise FailedPrecondition(
                f"{client.repo}:{reference} is a Docker schema 1 image, which Calyx does not support"
                " (deprecated by Docker; re-push it as schema 2 or OCI)"
            )
        return body, digest, doc

    def _pick(self, index: dict[str, Any], name: str) -> dict[str, Any]:
        arch = host_arch()
        candidates = [
            m
            for m in index.get("manifests", [])
            if m.get("platform", {}).get("os") == "linux"
            and m.get("platform", {}).get("architecture") == arch
        ]
        if not candidates:
            offered = sorted(
                f"{m.get('platform', {}).get('os')}/{m.get('platform', {}).get('architecture')}"
                for m in index.get("manifests", [])
            )
            raise NotFound(f"{name} has no image for linux/{arch} (it has {', '.join(offered) or 'none'})")
        return dict(candidates[0])

    def _pull_from(
        self, client: reg.RegistryClient, ref: Reference, deadline: float | None, lease: set[str]
    ) -> ImageRecord:
        body, top_digest, doc = self._manifest(client, ref.object, ref.digest)
        blobs: list[str] = []
        if "manifests" in doc or doc.get("mediaType") in INDEX_TYPES:
            lease.add(top_digest)
            self.content.put(top_digest, body)
            blobs.append(top_digest)
            chosen = self._pick(doc, str(ref))
            body, manifest_digest, doc = self._manifest(client, chosen["digest"], chosen["digest"])
        else:
            manifest_digest = top_digest
        lease.add(manifest_digest)
        self.content.put(manifest_digest, body)
        blobs.append(manifest_digest)
        failpoints.hit("image.pull_after_manifest", image=str(ref))
        config_desc = doc.get("config") or {}
        layer_descs = doc.get("layers") or []
        for desc in layer_descs:
            if desc.get("mediaType") not in LAYER_TYPES:
                raise FailedPrecondition(
                    f"{ref}: layer media type {desc.get('mediaType')!r} is not supported"
                )
        progress = Progress(str(ref), total=sum(int(d.get("size", 0)) for d in layer_descs))
        progress.layers_total = len(layer_descs)
        self._fetch(client, config_desc, deadline, lease, None)
        blobs.append(config_desc["digest"])
        config_doc = json.loads(self.content.read(config_desc["digest"]))
        diff_ids = list(config_doc.get("rootfs", {}).get("diff_ids", []))
        if len(diff_ids) != len(layer_descs):
            raise FailedPrecondition(
                f"{ref}: the config lists {len(diff_ids)} layers, the manifest {len(layer_descs)}"
            )
        self._fetch_layers(client, layer_descs, deadline, lease, progress)
        failpoints.hit("image.pull_after_blobs", image=str(ref))
        blobs.extend(desc["digest"] for desc in layer_descs)
        chains = chain_ids(diff_ids)
        lease.update(chains)
        layers = []
        for desc, diff_id, chain in zip(layer_descs, diff_ids, chains, strict=True):
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(f"pull of {ref}: deadline passed while unpacking")
            self.layers.ensure(chain, self.content.path(desc["digest"]), diff_id, desc["digest"])
            layers.append(
                {"digest": desc["digest"], "diff_id": diff_id, "chain_id": chain, "size": desc["size"]}
            )
        failpoints.hit("image.pull_after_unpack", image=str(ref))
        progress.log("pull complete")
        return ImageRecord(
            id=config_desc["digest"],
            repo_tags=[ref.tagged] if ref.tag else [],
            repo_digests=[ref.with_digest(top_digest)],
            manifest_digest=manifest_digest,
            config_digest=config_desc["digest"],
            blobs=blobs,
            layers=layers,
            size=int(config_desc.get("size", 0)) + sum(int(d["size"]) for d in layer_descs),
            pulled_at=time.time_ns(),
        )

    def _fetch_layers(
        self,
        client: reg.RegistryClient,
        descs: list[dict[str, Any]],
        deadline: float | None,
        lease: set[str],
        progress: Progress,
    ) -> None:
        """Download layers a few at a time (latency, not bandwidth, dominates pulls of many small
        layers). Leaving the pool waits for every download started, so nothing writes after a failure."""

        def one(desc: dict[str, Any]) -> None:
            self._fetch(client, desc, deadline, lease, progress)
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
        desc: dict[str, Any],
        deadline: float | None,
        lease: set[str],
        progress: Progress | None,
    ) -> None:
        digest, size = desc.get("digest", ""), desc.get("size")
        if not isinstance(size, int) or size < 0:
            raise FailedPrecondition(f"descriptor of {digest!r} has no valid size")
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

        self.downloads.do(digest, download, deadline)
