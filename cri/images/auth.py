"""Registry authentication: credentials from kubelet's AuthConfig or the Calyx config, and the answer to a
``WWW-Authenticate`` challenge (Basic, or Bearer with a token from the realm: anonymous, with
username/password, with an identity (refresh) token, or a registry token used as is).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from calyx_base.errors import InvalidArgument, PermissionDenied, Unavailable
from cri.images import validate

if TYPE_CHECKING:
    import httpx  # the HTTP client comes with the first pull (cri/images/manager.py)

    from cri.images.transport import Http

log = logging.getLogger("cri.images.auth")

_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
# A bearer token goes into a header: visible ASCII only (RFC 6750's b64token and JWTs are narrower).
_TOKEN = re.compile(r"[\x21-\x7e]{1,65536}\Z")
MAX_CHALLENGE = 8192
# Keys flights of pulls by credentials without keeping the credentials themselves in the key.
_FINGERPRINT_KEY = os.urandom(32)


class Unauthorized(PermissionDenied):
    """The registry refused our credentials (or wants some and we have none)."""


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    # The registry these are for (AuthConfig.server_address); "" means the image's own registry.
    server_address: str = ""

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    @property
    def fingerprint(self) -> str:
        """Equal for equal credentials given for the same registry, "" for none; a keyed hash, so it
        reveals nothing of them. (The same password given for another server_address is not sent to the
        same hosts, so it must not share a pull either.)"""
        if self.empty:
            return ""
        fields = "\0".join(
            [self.username, self.password, self.identity_token, self.registry_token, self.server_address]
        )
        return hmac.new(_FINGERPRINT_KEY, fields.encode(), hashlib.sha256).hexdigest()[:32]

    @classmethod
    def from_auth_config(cls, auth: Any) -> Credentials:
        """From a CRI AuthConfig message (username/password, ``auth`` = base64 "user:pass", tokens)."""
        username, password = auth.username, auth.password
        if auth.auth:
            try:
                decoded = base64.b64decode(auth.auth, validate=True).decode()
            except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text given to decode
                raise InvalidArgument("AuthConfig.auth is not base64 of user:password") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument("AuthConfig.auth is not base64 of user:password")
        if auth.registry_token and not _HEADER_TOKEN.fullmatch(auth.registry_token):
            # It is sent as "Authorization: Bearer <token>": anything else fails (or splits) the header.
            raise InvalidArgument("AuthConfig.registry_token may hold visible ASCII characters only")
        return cls(username, password, auth.identity_token, auth.registry_token, auth.server_address.strip())


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {realm:..., service:...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM.finditer(rest)
    }
    return scheme.lower(), params


def may_send_credentials(realm: str, registry_scheme: str, registry_hostname: str) -> bool:
    """Whether credentials may go to a token realm the registry's own challenge named: over HTTPS to any
    host (Docker Hub's realm is auth.docker.io), over plain HTTP only to the registry's own host when the
    registry itself is spoken to in plain HTTP (an insecure or loopback registry)."""
    parts = urlsplit(realm)
    if parts.scheme == "https":
        return True
    return registry_scheme == "http" and (parts.hostname or "").lower() == registry_hostname


class Authenticator:
    """Answers challenges for one registry endpoint and caches bearer tokens by scope.

    Only challenges of the endpoint itself reach ``learn`` (cri/images/registry.py): a host a redirect led
    to never names a realm that gets credentials."""

    def __init__(self, http: Http, credentials: Credentials, scheme: str, hostname: str) -> None:
        self.http = http
        self.credentials = credentials
        self.scheme = scheme
        self.hostname = hostname
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.challenge: tuple[str, dict[str, str]] | None = None
        self.withheld = ""  # a realm that was asked for a token without the credentials

    def headers(self, scope: str) -> dict[str, str]:
        """Authorization for a request, from what earlier challenges taught us."""
        if self.credentials.registry_token:
            return {"authorization": f"Bearer {self.credentials.registry_token}"}
        if self.challenge is None:
            return {}
        scheme, params = self.challenge
        if scheme == "basic":
            if not self.credentials.username:
                return {}
            return {"authorization": _basic(self.credentials)}
        if scheme == "bearer":
            return {"authorization": f"Bearer {self._token(params, scope)}"}
        return {}

    def learn(self, response: httpx.Response, scope: str) -> bool:
        """Remember the challenge of a 401; True if retrying with new headers may help."""
        header = response.headers.get("www-authenticate", "")
        if not header or len(header) > MAX_CHALLENGE or self.credentials.registry_token:
            return False
        scheme, params = parse_challenge(header)
        if scheme not in ("basic", "bearer"):
            return False
        first = self.challenge is None
        self.challenge = (scheme, params)
        if scheme == "bearer":
            with self._lock:
                fresh = self._tokens.pop(self._key(params, scope), None) is None
            return first or not fresh
        return first and bool(self.credentials.username)

    @staticmethod
    def _key(params: dict[str, str], scope: str) -> str:
        return f"{params.get('realm')}|{params.get('service')}|{scope}"

    def _token(self, params: dict[str, str], scope: str) -> str:
        key = self._key(params, scope)
        with self._lock:
            cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return cached[0]
        token, ttl = self._fetch_token(params, scope)
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + max(ttl - 10, 5))
        return token

    def _fetch_token(self, params: dict[str, str], scope: str) -> tuple[str, float]:
        realm = params.get("realm", "")
        try:
            validate.url(realm)
        except ValueError as exc:
            raise Unavailable(f"registry token realm {validate.shown(realm)} {exc}") from None
        service = params.get("service", "")
        creds = self.credentials
        if not creds.empty and not may_send_credentials(realm, self.scheme, self.hostname):
            log.warning(
                "not sending credentials to a plain-HTTP token realm on another host",
                extra={"realm": realm, "registry": self.hostname},
            )
            self.withheld = realm
            creds = Credentials()
        what = f"token server {realm}"
        if creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "service": service,
                "scope": scope,
                "client_id": "calyx",
            }
            response = self.http.send("POST", realm, what, data=form)
        else:
            query = {"service": service, "scope": scope} if service else {"scope": scope}
            headers = {"authorization": _basic(creds)} if creds.username else {}
            response = self.http.send("GET", realm, what, headers=headers, params=query)
        if response.status_code != 200:
            self.http.head(response, validate.MAX_ERROR_BYTES, what)
            if response.status_code in (401, 403):
                raise Unauthorized(f"{what} refused the credentials (HTTP {response.status_code})")
            raise Unavailable(f"{what}: HTTP {response.status_code}")
        raw = self.http.read(response, validate.MAX_TOKEN_BYTES, what)
        if raw is None:
            raise Unavailable(f"{what}: reply larger than the {validate.MAX_TOKEN_BYTES} bytes Calyx accepts")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise Unavailable(f"{what} answered with something that is not JSON") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise Unavailable(f"{what} answered without a usable token")
        expires = body.get("expires_in")
        ttl = float(expires) if isinstance(expires, int | float) and 0 < expires < 86400 * 365 else 60.0
        log.debug("got registry token", extra={"realm": realm, "scope": scope})
        return token, ttl


def _basic(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()
