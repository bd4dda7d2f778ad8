"""Registry authentication: credentials from kubelet's AuthConfig or the Calyx config, and the answer to a
``WWW-Authenticate`` challenge (Basic, or Bearer with a token from the realm: anonymous, with
username/password, with an identity (refresh) token, or a registry token used as is).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cri.errors import InvalidArgument, PermissionDenied, Unavailable

if TYPE_CHECKING:
    import httpx  # the HTTP client comes with the first pull (cri/images/manager.py)

log = logging.getLogger("cri.images.auth")

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


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

    @classmethod
    def from_auth_config(cls, auth: Any) -> Credentials:
        """From a CRI AuthConfig message (username/password, ``auth`` = base64 "user:pass", tokens)."""
        username, password = auth.username, auth.password
        if auth.auth:
            try:
                decoded = base64.b64decode(auth.auth, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidArgument("AuthConfig.auth is not base64 of user:password") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument("AuthConfig.auth is not base64 of user:password")
        return cls(username, password, auth.identity_token, auth.registry_token, auth.server_address.strip())


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {realm:..., service:...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM.finditer(rest)
    }
    return scheme.lower(), params


class Authenticator:
    """Answers challenges for one registry endpoint and caches bearer tokens by scope."""

    def __init__(self, client: httpx.Client, credentials: Credentials) -> None:
        self.client = client
        self.credentials = credentials
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.challenge: tuple[str, dict[str, str]] | None = None

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
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            return {"authorization": "Basic " + base64.b64encode(raw).decode()}
        if scheme == "bearer":
            return {"authorization": f"Bearer {self._token(params, scope)}"}
        return {}

    def learn(self, response: httpx.Response, scope: str) -> bool:
        """Remember the challenge of a 401; True if retrying with new headers may help."""
        header = response.headers.get("www-authenticate", "")
        if not header or self.credentials.registry_token:
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
        if not realm.startswith(("http://", "https://")):
            raise Unavailable(f"registry token realm {realm!r} is not an http(s) URL")
        service = params.get("service", "")
        creds = self.credentials
        import httpx

        try:
            if creds.identity_token:
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": creds.identity_token,
                    "service": service,
                    "scope": scope,
                    "client_id": "calyx",
                }
                response = self.client.post(realm, data=form)
            else:
                query = {"service": service, "scope": scope} if service else {"scope": scope}
                auth = (creds.username, creds.password) if creds.username else None
                response = self.client.get(realm, params=query, auth=auth)
        except httpx.HTTPError as exc:
            raise Unavailable(f"token server {realm}: {exc}") from None
        if response.status_code in (401, 403):
            raise Unauthorized(f"token server {realm} refused the credentials (HTTP {response.status_code})")
        if response.status_code != 200:
            raise Unavailable(f"token server {realm}: HTTP {response.status_code}")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise Unavailable(f"token server {realm} answered without a token")
        log.debug("got registry token", extra={"realm": realm, "scope": scope})
        return str(token), float(body.get("expires_in") or 60)
