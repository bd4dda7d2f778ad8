"""A client for the OCI distribution API v2: manifests and blobs from one registry endpoint.

Endpoints for an image's registry are its configured mirrors, in order, then the registry itself
(``endpoints``); a registry on loopback is spoken to in plain HTTP unless configured otherwise, as
containerd and Docker do. Every request is bounded by the pull's deadline (cri/images/transport.py).

Credentials and tokens go to the endpoint's own origin only. Redirects are followed here, not by httpx:
a request to another origin (a blob store) carries no Authorization header, and a 401 from such a host
is an error, never a challenge to answer: a realm it names gets nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse, urlsplit

import httpx

from calyx_base.errors import NotFound, Unavailable
from cri.config import ImagesConfig
from cri.images import validate
from cri.images.auth import Authenticator, Credentials, Unauthorized
from cri.images.transport import Http

log = logging.getLogger("cri.images.registry")

ACCEPT = ", ".join(
    [
        validate.MEDIA_OCI_INDEX,
        validate.MEDIA_OCI_MANIFEST,
        validate.MEDIA_DOCKER_LIST,
        validate.MEDIA_DOCKER_MANIFEST,
        validate.MEDIA_DOCKER_V1_SIGNED,
    ]
)
CHUNK = 256 * 1024
DOCKER_HUB = "registry-1.docker.io"
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
MAX_CHALLENGES = 2


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str  # host[:port]: what config and credentials are keyed by
    prefix: str = ""  # repository path prefix on a mirror ("" for most)
    mirror: bool = False

    def url(self, repo: str, kind: str, ref: str) -> str:
        path = f"{self.prefix}/{repo}" if self.prefix else repo
        return f"{self.scheme}://{self.host}/v2/{path}/{kind}/{ref}"

    @property
    def hostname(self) -> str:
        """The host without port or brackets ("[::1]:5000" -> "::1")."""
        return hostname(self.host)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" + (f"/{self.prefix}" if self.prefix else "")


def hostname(host: str) -> str:
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


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


class RegistryClient:
    """Talks to one endpoint for one repository during one pull."""

    def __init__(
        self, endpoint: Endpoint, repo: str, credentials: Credentials, deadline: float | None
    ) -> None:
        self.endpoint = endpoint
        self.repo = repo
        self.deadline = deadline
        self.http = Http(deadline)
        self.origin = _origin(httpx.URL(f"{endpoint.scheme}://{endpoint.host}/"))
        self.auth = Authenticator(self.http, credentials, endpoint.scheme, endpoint.hostname)
        self.scope = f"repository:{endpoint.prefix + '/' if endpoint.prefix else ''}{repo}:pull"

    def close(self) -> None:
        self.http.close()

    def _send(self, url: str, accept: str, what: str) -> httpx.Response:
        """GET ``url``, answering the endpoint's own challenges and following redirects; the 200 response
        (body unread) or the error the answer means."""
        target = httpx.URL(url)
        redirects = challenges = 0
        while True:
            own = _origin(target) == self.origin
            headers = {"accept": accept, **(self.auth.headers(self.scope) if own else {})}
            response = self.http.send("GET", target, f"{what} from {self.endpoint}", headers)
            status = response.status_code
            if status in REDIRECTS:
                location = response.headers.get("location", "")
                response.close()
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise Unavailable(f"{what}: {self.endpoint} redirected more than {MAX_REDIRECTS} times")
                target = self._redirect(target, location, what)
                continue
            if (
                status == 401
                and own
                and challenges < MAX_CHALLENGES
                and self.auth.learn(response, self.scope)
            ):
                response.close()
                challenges += 1
                continue
            if status == 200:
                return response
            raise self._refusal(response, what, own, challenges >= MAX_CHALLENGES)

    def _redirect(self, current: httpx.URL, location: str, what: str) -> httpx.URL:
        try:
            target = current.join(location)
            validate.url(str(target))
        except (ValueError, httpx.InvalidURL) as exc:
            raise Unavailable(
                f"{what}: {self.endpoint} redirected to {validate.shown(location)}, which {exc}"
            ) from None
        if _origin(target) != self.origin:
            log.debug("following a redirect without credentials", extra={"what": what, "to": target.host})
        return target

    def _refusal(self, response: httpx.Response, what: str, own: bool, insistent: bool) -> Exception:
        status = response.status_code
        where = (
            f"{self.endpoint}" if own else f"{response.url.host} (a redirect from {self.endpoint} led there)"
        )
        body = self.http.head(response, validate.MAX_ERROR_BYTES, f"{what} from {where}")
        if status == 404:
            return NotFound(f"{what} not found at {where}")
        if status in (401, 403):
            note = ""
            if not own:
                note = f"; credentials go to {self.endpoint} only, never to a host a redirect led to"
            elif self.auth.withheld:
                note = (
                    f"; the credentials were not sent to its token realm {self.auth.withheld}"
                    " (plain HTTP to a host other than the registry)"
                )
            if status == 401 and insistent:
                return Unauthorized(f"{what}: {where} keeps asking for authentication{note}")
            return Unauthorized(f"{what}: {where} refused access (HTTP {status}){note}")
        text = body[:200].decode(errors="replace")
        text = "".join(c if c.isprintable() else " " for c in text).strip()
        return Unavailable(f"{what} from {where}: HTTP {status}" + (f": {text}" if text else ""))

    def manifest(self, reference: str) -> tuple[bytes, str]:
        """The manifest (or index) body and its media type."""
        what = f"manifest {self.repo}:{reference}"
        response = self._send(self.endpoint.url(self.repo, "manifests", reference), ACCEPT, what)
        media = response.headers.get("content-type", "").split(";")[0].strip()
        body = self.http.read(response, validate.MAX_MANIFEST_BYTES, f"{what} from {self.endpoint}")
        if body is None:
            raise validate.InvalidImage(
                f"{what} from {self.endpoint} is larger than the {validate.MAX_MANIFEST_BYTES} bytes Calyx"
                " accepts"
            )
        return body, media

    @contextlib.contextmanager
    def blob(self, digest: str) -> Iterator[Iterator[bytes]]:
        """The blob's bytes as they arrive (unverified: the content store checks them)."""
        what = f"blob {digest}"
        response = self._send(self.endpoint.url(self.repo, "blobs", digest), "*/*", what)
        try:
            yield self.http.chunks(response, CHUNK, f"{what} from {self.endpoint}")
        finally:
            response.close()
