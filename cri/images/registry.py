"""A client for the OCI distribution API v2: manifests and blobs from one registry endpoint.

Endpoints for an image's registry are its configured mirrors, in order, then the registry itself
(``endpoints``); a registry on loopback is spoken to in plain HTTP unless configured otherwise, as
containerd and Docker do. Every request carries a timeout no later than the pull's deadline, so a
registry that stops answering cannot hold a PullImage past what kubelet allowed.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse, urlsplit

import httpx

from cri.config import ImagesConfig
from cri.errors import DeadlineExceeded, NotFound, Unavailable
from cri.images.auth import Authenticator, Credentials, Unauthorized

log = logging.getLogger("cri.images.registry")

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"
MEDIA_DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
ACCEPT = ", ".join(
    [MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_V1_SIGNED]
)
MAX_MANIFEST = 4 * 1024 * 1024
CHUNK = 256 * 1024
REQUEST_TIMEOUT = 30.0
DOCKER_HUB = "registry-1.docker.io"


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str  # host[:port]: what config and credentials are keyed by
    prefix: str = ""  # repository path prefix on a mirror ("" for most)
    mirror: bool = False

    def url(self, repo: str, kind: str, ref: str) -> str:
        path = f"{self.prefix}/{repo}" if self.prefix else repo
        return f"{self.scheme}://{self.host}/v2/{path}/{kind}/{ref}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" + (f"/{self.prefix}" if self.prefix else "")


def hostname(host: str) -> str:
    """The host of host[:port] without port or brackets ("[::1]:5000" -> "::1")."""
    return (urlsplit(f"//{host}").hostname or "").lower()


def is_loopback(host: str) -> bool:
    """Whether host[:port] names this machine: localhost, 127.0.0.0/8 or ::1."""
    name = hostname(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def scheme_for(host: str, config: ImagesConfig) -> str:
    """Plain HTTP for an insecure registry, and for one on loopback unless images.loopback_plain_http
    is off; HTTPS for every other."""
    settings = config.registries.get(host)
    if settings is not None and settings.insecure:
        return "http"
    return "http" if config.loopback_plain_http and is_loopback(host) else "https"


def _endpoint(text: str, config: ImagesConfig, mirror: bool) -> Endpoint:
    if "://" in text:
        parsed = urlparse(text)
        return Endpoint(parsed.scheme, parsed.netloc, parsed.path.strip("/"), mirror)
    host, _, prefix = text.strip("/").partition("/")
    return Endpoint(scheme_for(host, config), host, prefix, mirror)


def endpoints(domain: str, config: ImagesConfig) -> list[Endpoint]:
    """Mirrors of ``domain`` in configured order, then ``domain`` itself."""
    settings = config.registries.get(domain)
    found = [_endpoint(m, config, True) for m in (settings.mirrors if settings else [])]
    if domain == "docker.io":
        found.append(Endpoint("http" if settings is not None and settings.insecure else "https", DOCKER_HUB))
    else:
        found.append(Endpoint(scheme_for(domain, config), domain))
    return found


DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def registry_host(address: str) -> str:
    """The host[:port] an address names, as registries are compared: "https://host:port/v2/",
    "host:port/v1/" and "host:port" are the same; Docker Hub's names are all "docker.io"."""
    text = address.strip().lower()
    scheme = ""
    if "://" in text:
        scheme, _, text = text.partition("://")
    host = text.split("/", 1)[0]
    name, sep, port = host.rpartition(":")
    if sep and "]" not in port and _DEFAULT_PORTS.get(scheme) == port:
        host = name
    return "docker.io" if host in DOCKER_HUB_ALIASES else host


def given_for(endpoint: Endpoint, domain: str, given: Credentials) -> bool:
    """Whether kubelet's credentials may go to ``endpoint``: with a server_address, only to that host
    (the registry, or a mirror that is that same host); without one, to the image's registry only."""
    if given.empty:
        return False
    if not given.server_address:
        return not endpoint.mirror
    wanted = registry_host(given.server_address)
    here = registry_host(f"{endpoint.scheme}://{endpoint.host}")
    hosts = {here} | (set() if endpoint.mirror else {registry_host(domain)})
    return wanted in hosts


def credentials_for(endpoint: Endpoint, domain: str, given: Credentials, config: ImagesConfig) -> Credentials:
    """Kubelet's AuthConfig where ``given_for`` allows it; otherwise the endpoint's configured ones."""
    if given_for(endpoint, domain, given):
        return given
    settings = config.registries.get(endpoint.host if endpoint.mirror else domain)
    if settings is not None and settings.username:
        return Credentials(settings.username, settings.password)
    return Credentials()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once: building it loads the CA bundle (~70 ms here),
    which every pull paid for each client, even over plain HTTP. SSLContext is safe to share."""
    return httpx.create_ssl_context()


class RegistryClient:
    """Talks to one endpoint for one repository during one pull."""

    def __init__(
        self, endpoint: Endpoint, repo: str, credentials: Credentials, deadline: float | None
    ) -> None:
        self.endpoint = endpoint
        self.repo = repo
        self.deadline = deadline
        self.client = httpx.Client(
            follow_redirects=True, headers={"user-agent": "calyx"}, verify=_tls_context()
        )
        self.auth = Authenticator(self.client, credentials)
        self.scope = f"repository:{endpoint.prefix + '/' if endpoint.prefix else ''}{repo}:pull"

    def close(self) -> None:
        self.client.close()

    def _timeout(self) -> httpx.Timeout:
        limit = REQUEST_TIMEOUT
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"pull from {self.endpoint}: deadline passed")
            limit = min(limit, remaining)
        return httpx.Timeout(limit)

    def _send(self, url: str, accept: str, what: str) -> httpx.Response:
        for _ in range(3):
            request = self.client.build_request(
                "GET",
                url,
                headers={"accept": accept, **self.auth.headers(self.scope)},
                timeout=self._timeout(),
            )
            try:
                response = self.client.send(request, stream=True)
            except httpx.TimeoutException:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    raise DeadlineExceeded(f"{what} from {self.endpoint}: deadline passed") from None
                raise Unavailable(f"{what} from {self.endpoint}: timed out") from None
            except httpx.HTTPError as exc:
                raise Unavailable(f"{what} from {self.endpoint}: {exc}") from None
            if response.status_code == 401 and self.auth.learn(response, self.scope):
                response.close()
                continue
            if response.status_code == 200:
                return response
            response.read()
            response.close()
            status = response.status_code
            if status == 404:
                raise NotFound(f"{what} not found at {self.endpoint}")
            if status in (401, 403):
                raise Unauthorized(f"{what}: {self.endpoint} refused access (HTTP {status})")
            raise Unavailable(f"{what} from {self.endpoint}: HTTP {status}: {response.text[:200]}")
        raise Unauthorized(f"{what}: {self.endpoint} keeps asking for authentication")

    def manifest(self, reference: str) -> tuple[bytes, str]:
        """The manifest (or index) body and its media type."""
        what = f"manifest {self.repo}:{reference}"
        response = self._send(self.endpoint.url(self.repo, "manifests", reference), ACCEPT, what)
        try:
            body = b""
            for chunk in response.iter_bytes(CHUNK):
                body += chunk
                if len(body) > MAX_MANIFEST:
                    raise Unavailable(f"{what}: larger than {MAX_MANIFEST} bytes")
        except httpx.HTTPError as exc:
            raise Unavailable(f"{what} from {self.endpoint}: {exc}") from None
        finally:
            response.close()
        media = response.headers.get("content-type", "").split(";")[0].strip()
        return body, media

    @contextlib.contextmanager
    def blob(self, digest: str) -> Iterator[Iterator[bytes]]:
        """The blob's bytes as they arrive (unverified: the content store checks them)."""
        what = f"blob {digest}"
        response = self._send(self.endpoint.url(self.repo, "blobs", digest), "*/*", what)

        def chunks() -> Iterator[bytes]:
            try:
                yield from response.iter_raw(CHUNK)
            except httpx.TimeoutException:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    raise DeadlineExceeded(f"{what} from {self.endpoint}: deadline passed") from None
                raise Unavailable(f"{what} from {self.endpoint}: timed out") from None
            except httpx.HTTPError as exc:
                raise Unavailable(f"{what} from {self.endpoint}: connection lost: {exc}") from None

        try:
            yield chunks()
        finally:
            response.close()
