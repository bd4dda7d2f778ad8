"""A real OCI registry for tests: Debian's docker-registry on loopback, plain or behind basic or token auth.

Each registry is a child process stopped by PID. The token variant needs a token server: a tiny HTTP
server in this process that checks credentials and issues RS256 JWTs signed (with ``openssl``) by a key
whose self-signed certificate is the registry's ``rootcertbundle``.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx

REGISTRY_BIN = "/usr/bin/docker-registry"
SERVICE = "calyx-test-registry"
ISSUER = "calyx-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Registry:
    """One docker-registry process serving ``storage`` on 127.0.0.1:<port>."""

    def __init__(self, base: Path, storage: Path, auth: dict[str, Any] | None = None) -> None:
        self.base = base
        self.storage = storage
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.auth = auth
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = base / f"registry-{self.port}.log"

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.host}",
            f"  secret: {uuid.uuid4().hex}",
        ]
        if self.auth:
            lines.append("auth:")
            for kind, options in self.auth.items():
                lines.append(f"  {kind}:")
                lines += [f"    {k}: {v}" for k, v in options.items()]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 60.0) -> Registry:
        config = self.base / f"registry-{self.port}.yml"
        config.write_text(self._config())
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_file.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"docker-registry not answering on {self.host}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop()

    def blob_path(self, repo: str, digest: str) -> Path:
        """Where the registry keeps a blob (tests corrupt it there)."""
        algo, hexd = digest.split(":", 1)
        return self.storage / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"


def htpasswd_file(path: Path, users: dict[str, str]) -> Path:
    lines = []
    for user, password in users.items():
        out = subprocess.run(
            ["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True, timeout=30
        )
        lines.append(out.stdout.strip())
    path.write_text("\n".join(lines) + "\n")
    return path


class TokenServer:
    """Issues registry tokens. ``users`` may pull and push anything; anonymous callers may pull
    repositories under ``public/``; ``refresh_tokens`` (identity tokens) are exchanged for access tokens
    by the OAuth2 POST flow."""

    def __init__(self, base: Path, users: dict[str, str], refresh_tokens: dict[str, str]) -> None:
        self.base = base
        self.users = users
        self.refresh_tokens = refresh_tokens  # refresh token -> user
        self.key = base / "token.key"
        self.cert = base / "token.crt"
        req = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key)]
        subprocess.run(
            [*req, "-out", str(self.cert), "-days", "2", "-subj", "/CN=calyx-test-token"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        self.x5c = base64.b64encode(der).decode()
        self.requests: list[dict[str, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def auth_config(self) -> dict[str, Any]:
        return {
            "token": {
                "realm": self.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(self.cert),
                "autoredirect": "false",
            }
        }

    def sign(self, subject: str, access: list[dict[str, Any]], ttl: int = 300) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + ttl,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        return f"{signing_input}.{b64url(signature)}"

    def grant(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            if user is None:
                wanted = [a for a in wanted if a == "pull"] if name.startswith("public/") else []
            if kind == "repository" and wanted:
                access.append({"type": "repository", "name": name, "actions": wanted})
        return access

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _user(self) -> tuple[bool, str | None]:
                header = self.headers.get("authorization", "")
                if not header:
                    return True, None
                if not header.lower().startswith("basic "):
                    return False, None
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                return server.users.get(user) == password, user

            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                ok, user = self._user()
                server.requests.append({"method": "GET", "user": user, "query": query})
                if not ok:
                    self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                    return
                token = server.sign(user or "", server.grant(user, query.get("scope", [])))
                self._reply(200, {"token": token, "access_token": token, "expires_in": 300})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                server.requests.append({"method": "POST", "form": form})
                refresh = form.get("refresh_token", [""])[0]
                user = server.refresh_tokens.get(refresh)
                if form.get("grant_type", [""])[0] != "refresh_token" or user is None:
                    self._reply(401, {"error": "invalid_grant"})
                    return
                scopes = " ".join(form.get("scope", [])).split()
                token = server.sign(user, server.grant(user, scopes))
                self._reply(200, {"access_token": token, "expires_in": 300})

        return Handler


class FaultyProxy:
    """A plain-HTTP proxy in front of a registry that misbehaves on one blob.

    ``mode``: "cut" sends half of the blob then closes the connection (a registry dying mid-pull);
    "stall" sends half and then waits until ``release()``; "gate" holds the whole response until
    ``release()``. ``blob_requests`` counts requests for the blob. ``seen`` keeps every request's path
    and Authorization header (None without one): with ``digest=""`` it is a plain recording proxy.
    """

    def __init__(self, upstream: str, digest: str, mode: str) -> None:
        self.upstream = upstream
        self.digest = digest
        self.mode = mode
        self.blob_requests = 0
        self.seen: list[tuple[str, str | None]] = []
        self.released = threading.Event()
        self.half_sent = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.seen.append((self.path, self.headers.get("authorization")))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization")}
                upstream = httpx.get(f"http://{proxy.upstream}{self.path}", headers=headers, timeout=30)
                body = upstream.content
                faulty = bool(proxy.digest) and self.path.endswith(f"/blobs/{proxy.digest}")
                if faulty:
                    proxy.blob_requests += 1
                    if proxy.mode == "gate":
                        proxy.released.wait(120)
                self.send_response(upstream.status_code)
                for key in ("content-type", "docker-content-digest", "www-authenticate"):
                    if key in upstream.headers:
                        self.send_header(key, upstream.headers[key])
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if not faulty or proxy.mode == "gate":
                    self.wfile.write(body)
                    return
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                proxy.half_sent.set()
                if proxy.mode == "stall":
                    proxy.released.wait(120)
                self.close_connection = True

        return Handler
