"""A minimal OCI distribution push client: blobs by monolithic upload, then manifests by tag or digest.

Tests push the images they build into Debian's docker-registry on loopback; nothing else is needed
from a push client, so chunked uploads and cross-repository mounts are left out.
"""

from __future__ import annotations

import httpx

from critest.oci import Blob, Image


class PushError(RuntimeError):
    pass


class Pusher:
    def __init__(self, registry: str, auth: tuple[str, str] | None = None, timeout: float = 60.0) -> None:
        """``registry`` is host:port (plain HTTP) or a full http(s):// base URL."""
        base = registry if "://" in registry else f"http://{registry}"
        self.base = base.rstrip("/")
        self.client = httpx.Client(auth=auth, timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Pusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response, what: str, ok: tuple[int, ...]) -> None:
        if response.status_code not in ok:
            raise PushError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")

    def blob(self, repo: str, blob: Blob) -> None:
        head = self.client.head(f"{self.base}/v2/{repo}/blobs/{blob.digest}")
        if head.status_code == 200:
            return
        start = self.client.post(f"{self.base}/v2/{repo}/blobs/uploads/")
        self._check(start, f"start upload to {repo}", (202,))
        location = start.headers["location"]
        if location.startswith("/"):
            location = self.base + location
        # The location carries the upload's state in its query: add the digest, keep the rest.
        url = httpx.URL(location).copy_merge_params({"digest": blob.digest})
        put = self.client.put(
            url,
            content=blob.data,
            headers={"content-type": "application/octet-stream"},
        )
        self._check(put, f"upload {blob.digest} to {repo}", (201,))

    def manifest(self, repo: str, reference: str, manifest: Blob) -> None:
        put = self.client.put(
            f"{self.base}/v2/{repo}/manifests/{reference}",
            content=manifest.data,
            headers={"content-type": manifest.media_type},
        )
        self._check(put, f"put manifest {repo}:{reference}", (201,))

    def image(self, repo: str, image: Image, tags: list[str]) -> str:
        """Push ``image`` under every tag (or only by digest if none); returns the manifest digest."""
        for blob in image.blobs:
            self.blob(repo, blob)
        for tag in tags or [image.manifest.digest]:
            self.manifest(repo, tag, image.manifest)
        return image.manifest.digest

    def index(self, repo: str, index: Blob, images: list[Image], tags: list[str]) -> str:
        for image in images:
            self.image(repo, image, [])
        for tag in tags or [index.digest]:
            self.manifest(repo, tag, index)
        return index.digest
