"""PullImage against a hostile registry (tests/hostile_registry.py), through the real daemon over gRPC:
documents breaking the OCI grammar, trickled and oversized bodies, challenges and redirects that lead
credentials to other hosts.

Every case ends in a clear gRPC status and leaves nothing on disk (no blob, no layer dir, no temporary
file); the daemon stays up and restarts cleanly. 127.0.0.2 and 127.0.0.3 are "other hosts" on loopback;
a registry on loopback is spoken to in plain HTTP without any config (issue 14).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.api import api_pb2 as pb
from critest.oci import (
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    Entry,
    Image,
    canonical,
    make_image,
    make_index,
    make_layer,
)
from tests.daemon import Daemon
from tests.e2e.test_images import leftovers, listed, pull, rpc_error, status
from tests.hostile_registry import HostileServer, Reply, self_signed
from tests.waiting import wait_for

MiB = 1024 * 1024
REPO = "hostile/app"
USER, PASSWORD = "alice", "wonderland"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
NOTHING = {"ingest": [], "blobs": [], "layers": []}


def tiny(text: str = "hostile", pad: int = 0, labels: dict[str, str] | None = None) -> Image:
    """A one-layer image (``pad`` random bytes make its layer that much longer)."""
    entries = [Entry("hostile", data=text.encode())]
    if pad:
        entries.append(Entry("pad", data=os.urandom(pad)))
    return make_image([make_layer(entries)], labels=labels)


IMAGE = tiny()
MANIFEST = json.loads(IMAGE.manifest.data)
INDEX = json.loads(make_index({"amd64": IMAGE}).data)


def edited(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with the field at ``path`` ("layers.0.digest") set to ``value``."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return out


@pytest.fixture
def servers() -> Iterator[Callable[..., HostileServer]]:
    made: list[HostileServer] = []

    def make(address: str = "127.0.0.1", **kw: Any) -> HostileServer:
        server = HostileServer(address, **kw)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def ref(server: HostileServer, tag: str = "t", repo: str = REPO) -> str:
    return f"{server.host}/{repo}:{tag}"


def assert_clean_and_alive(d: Daemon) -> None:
    """Nothing stored, nothing half-written; and the daemon restarts to the same."""
    assert listed(d) == []
    assert leftovers(d) == NOTHING
    d.restart()
    assert listed(d) == []
    assert leftovers(d) == NOTHING


def rss_bytes(d: Daemon) -> int:
    assert d.proc is not None
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_registry_on_ipv6_loopback_is_plain_http_without_config_unless_turned_off(
    daemon_factory: Callable[..., Daemon], servers: Callable[..., HostileServer]
) -> None:
    server = servers("::1")
    server.serve_image(REPO, "t", IMAGE)
    assert server.host.startswith("[::1]:")
    d = daemon_factory()
    assert pull(d, ref(server)) == IMAGE.config.digest
    assert server.requests("/blobs/"), server.seen
    strict = daemon_factory({"images": {"loopback_plain_http": False}})
    err = rpc_error(lambda: pull(strict, ref(server)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "https://[::1]" in (err.details() or ""), (
        err.details()
    )
    assert listed(strict) == []


# --- malformed documents --------------------------------------------------------------------------

LAYER_HEX = IMAGE.layers[0].blob.digest.split(":", 1)[1]
# name -> (the manifest served, what the error must name)
MANIFESTS: dict[str, tuple[Any, str]] = {
    "layer-digest-absolute": (
        edited(MANIFEST, "layers.0.digest", "sha256:/etc"),
        "manifest layers[0].digest",
    ),
    "layer-digest-traversal": (
        edited(MANIFEST, "layers.0.digest", "sha256:../../../../etc/passwd"),
        "manifest layers[0].digest",
    ),
    "layer-digest-short": (
        edited(MANIFEST, "layers.0.digest", "sha256:" + LAYER_HEX[:-1]),
        "manifest layers[0].digest",
    ),
    "layer-digest-uppercase": (
        edited(MANIFEST, "layers.0.digest", "sha256:" + LAYER_HEX.upper()),
        "manifest layers[0].digest",
    ),
    "layer-digest-algorithm": (
        edited(MANIFEST, "layers.0.digest", "md5:" + LAYER_HEX[:32]),
        "manifest layers[0].digest",
    ),
    "config-digest-traversal": (
        edited(MANIFEST, "config.digest", "sha256:../../blobs"),
        "manifest config.digest",
    ),
    "layer-media-type-grammar": (
        edited(MANIFEST, "layers.0.mediaType", "application/x-evil; a=1"),
        "manifest layers[0].mediaType",
    ),
    "layer-media-type-foreign": (
        edited(MANIFEST, "layers.0.mediaType", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
        "manifest layers[0].mediaType",
    ),
    "config-media-type": (edited(MANIFEST, "config.mediaType", "text/html"), "manifest config.mediaType"),
    "size-negative": (edited(MANIFEST, "layers.0.size", -1), "manifest layers[0].size"),
    "size-boolean": (edited(MANIFEST, "layers.0.size", True), "manifest layers[0].size"),
    "size-string": (edited(MANIFEST, "layers.0.size", "12"), "manifest layers[0].size"),
    "size-huge": (edited(MANIFEST, "layers.0.size", 1 << 50), "manifest layers[0].size"),
    "config-size-over-cap": (edited(MANIFEST, "config.size", 9 * MiB), "manifest config.size"),
    "url-file": (edited(MANIFEST, "layers.0.urls", ["file:///etc/passwd"]), "manifest layers[0].urls[0]"),
    "layers-not-array": (edited(MANIFEST, "layers", "abc"), "manifest layers"),
    "config-not-object": (edited(MANIFEST, "config", []), "manifest config"),
    "schema-version-string": (edited(MANIFEST, "schemaVersion", "2"), "manifest schemaVersion"),
    "too-many-layers": (edited(MANIFEST, "layers", MANIFEST["layers"] * 501), "manifest layers"),
    "manifest-not-object": (b"[]", "not a JSON object"),
    "manifest-not-json": (b"{", "is not JSON"),
    "manifest-nesting-bomb": (b"[" * 100_000 + b"]" * 100_000, "is not JSON"),
    "manifest-over-cap": (edited(MANIFEST, "annotations", {"pad": "x" * (5 * MiB)}), "larger than"),
    # indexes: every entry is checked before one is picked, and no request goes to a crafted path
    "index-entry-traversal": (
        edited(INDEX, "manifests.0.digest", "sha256:../../../manifests/t"),
        "index manifests[0].digest",
    ),
    "index-entry-over-cap": (edited(INDEX, "manifests.0.size", 5 * MiB), "index manifests[0].size"),
    "index-manifests-not-array": (edited(INDEX, "manifests", {"a": 1}), "index manifests"),
    "index-platform-not-object": (
        edited(INDEX, "manifests.0.platform", "linux/amd64"),
        "index manifests[0].platform",
    ),
    "index-entry-is-a-layer": (
        edited(INDEX, "manifests.0.mediaType", MEDIA_OCI_LAYER),
        "not an image manifest",
    ),
}


def test_malformed_manifests_and_indexes_are_refused_before_any_use(
    daemon_factory: Callable[..., Daemon], servers: Callable[..., HostileServer]
) -> None:
    server = servers()
    server.serve_image(REPO, "good", IMAGE)  # the blobs every crafted manifest points at, when it does
    for name, (doc, _field) in MANIFESTS.items():
        media = MEDIA_OCI_INDEX if name.startswith("index-") else MEDIA_OCI_MANIFEST
        server.serve_document(REPO, name, doc, media)
    d = daemon_factory()  # no registry config: a loopback registry is plain HTTP by default
    wrong = []
    for name, (_doc, field) in MANIFESTS.items():
        server.seen.clear()
        try:
            wrong.append(f"{name}: pulled as {pull(d, ref(server, name))}")
        except grpc.RpcError as err:
            details = err.details() or ""
            if (
                err.code() != grpc.StatusCode.FAILED_PRECONDITION
                or field not in details
                or REPO not in details
            ):
                wrong.append(f"{name}: {err.code()} {details}")
        if server.requests("/blobs/") or [s for s in server.seen if ".." in s.path or "/etc" in s.path]:
            wrong.append(f"{name}: the daemon asked for {[s.path for s in server.seen]}")
    assert wrong == []
    assert len(pull(d, ref(server, "good"))) > 0  # the same daemon still pulls a sound image
    d.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref(server, "good"))))
    assert_clean_and_alive(d)


# --- one deadline for the whole pull --------------------------------------------------------------

TRICKLE = 0.2  # seconds per byte: every trickled body below would take minutes


def _trickling(server: HostileServer, what: str) -> None:
    image = tiny("slow", pad=2000, labels={"pad": "x" * 2000})
    server.serve_image(REPO, "t", image)
    manifest_paths = [f"/v2/{REPO}/manifests/t", f"/v2/{REPO}/manifests/{image.manifest.digest}"]
    if what == "manifest":
        padded = edited(json.loads(image.manifest.data), "annotations", {"pad": "x" * 2000})
        server.serve_document(REPO, "t", padded, MEDIA_OCI_MANIFEST)
        server.routes[manifest_paths[0]].trickle = TRICKLE
    elif what == "headers":
        server.routes[manifest_paths[0]].trickle_headers = True
        server.routes[manifest_paths[0]].trickle = TRICKLE
    elif what == "config":
        server.routes[f"/v2/{REPO}/blobs/{image.config.digest}"].trickle = TRICKLE
    elif what == "layer":
        server.routes[f"/v2/{REPO}/blobs/{image.layers[0].blob.digest}"].trickle = TRICKLE
    elif what == "error-body":
        server.routes[manifest_paths[0]] = Reply(status=500, body=b"e" * 3000, trickle=TRICKLE)
    elif what == "token":
        challenge = f'Bearer realm="{server.url("/token")}",service="hostile"'
        for reply in server.routes.values():
            reply.auth, reply.challenge = "Bearer slow-token", challenge
        body = json.dumps({"token": "slow-token", "pad": "x" * 3000}).encode()
        server.routes["/token"] = Reply(body=body, trickle=TRICKLE)


@pytest.mark.parametrize("what", ["manifest", "headers", "config", "layer", "error-body", "token"])
def test_a_trickled_answer_ends_the_pull_at_its_deadline(
    daemon_factory: Callable[..., Daemon], servers: Callable[..., HostileServer], what: str
) -> None:
    server = servers()
    _trickling(server, what)
    d = daemon_factory()
    err = rpc_error(lambda: pull(d, ref(server), timeout=4))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The daemon gives up too: it hangs up on the trickle (which would go on for minutes) and its
    # PullImage handler returns DEADLINE_EXCEEDED, freeing its gRPC worker.
    wait_for(server.hung_up.is_set, "the daemon hung up on the trickled answer", timeout=60)
    wait_for(
        lambda: "method=PullImage" in d.log() and "code=DEADLINE_EXCEEDED" in d.log(), "the handler ended"
    )
    assert_clean_and_alive(d)


def test_without_a_client_deadline_the_configured_one_applies(
    daemon_factory: Callable[..., Daemon], servers: Callable[..., HostileServer]
) -> None:
    server = servers()
    _trickling(server, "layer")
    d = daemon_factory({"images": {"pull_timeout_seconds": 3.0}})
    call = d.images.PullImage.future(
        pb.PullImageRequest(image=pb.ImageSpec(image=ref(server)))
    )  # no deadline
    try:
        err = rpc_error(lambda: call.result(timeout=120))
    finally:
        call.cancel()
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    assert "deadline has passed" in (err.details() or "")  # the daemon's answer
    wait_for(server.hung_up.is_set, "the daemon hung up on the trickled layer", timeout=60)
    assert_clean_and_alive(d)


def test_a_trickled_tls_handshake_ends_the_pull_at_its_deadline(
    daemon_factory: Callable[..., Daemon], servers: Callable[..., HostileServer]
) -> None:
    registry = servers()
    registry.serve_image(REPO, "t", IMAGE)
    mirror = servers(tls_trickle=TRICKLE)
    d = daemon_factory({"images": {"registries": {registry.host: {"mirrors": [f"https://{mirror.host}"]}}}})
    err = rpc_error(lambda: pull(d, ref(registry), timeout=4))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(mirror.hung_up.is_set, "the daemon hung up on the trickled handshake", timeout=60)
    assert_clean_and_alive(d)


# --- huge bodies --------------------------------------------------------------------------------------


def test_huge_bodies_are_not_read_and_the_daemon_does_not_grow(
    daemon_factory: Callable[..., Daemon], servers: Callable[..., HostileServer]
) -> None:
    server = servers()
    huge = 200 * MiB
    manifest = f"/v2/{REPO}/manifests"
    server.routes[f"{manifest}/warm-up"] = Reply(status=500, body=b"warm")
    server.routes[f"{manifest}/error"] = Reply(status=500, size=huge)
    server.routes[f"{manifest}/error-unframed"] = Reply(status=502, size=huge, close_delimited=True)
    server.routes[f"{manifest}/manifest"] = Reply(size=huge, headers={"content-type": MEDIA_OCI_MANIFEST})
    server.routes[f"{manifest}/manifest-unframed"] = Reply(size=huge, close_delimited=True)
    challenge = f'Bearer realm="{server.url("/token")}"'
    server.routes[f"{manifest}/token"] = Reply(auth="Bearer never", challenge=challenge)
    server.routes["/token"] = Reply(size=huge, close_delimited=True)
    d = daemon_factory()
    assert rpc_error(lambda: pull(d, ref(server, "warm-up"))).code() == grpc.StatusCode.UNAVAILABLE
    before = rss_bytes(d)
    expected = {
        "error": grpc.StatusCode.UNAVAILABLE,
        "error-unframed": grpc.StatusCode.UNAVAILABLE,
        "manifest": grpc.StatusCode.FAILED_PRECONDITION,
        "manifest-unframed": grpc.StatusCode.FAILED_PRECONDITION,
        "token": grpc.StatusCode.UNAVAILABLE,
    }
    got = {tag: rpc_error(lambda tag=tag: pull(d, ref(server, tag))) for tag in expected}
    grown = rss_bytes(d) - before
    assert grown < 64 * MiB, f"the daemon's RSS grew by {grown / MiB:.0f} MiB"
    assert {tag: err.code() for tag, err in got.items()} == expected, {t: e.details() for t, e in got.items()}
    assert_clean_and_alive(d)


# --- where credentials go -------------------------------------------------------------------------


def _creds(source: str, registry: HostileServer) -> tuple[dict[str, Any], pb.AuthConfig | None]:
    """Daemon config and AuthConfig giving alice's credentials for ``registry``, from ``source``."""
    if source == "config":
        return {"images": {"registries": {registry.host: {"username": USER, "password": PASSWORD}}}}, None
    return {}, pb.AuthConfig(username=USER, password=PASSWORD, server_address=registry.host)


@pytest.mark.parametrize("source", ["config", "auth_config"])
def test_credentials_never_go_to_a_plain_http_realm_on_another_host(
    daemon_factory: Callable[..., Daemon], servers: Callable[..., HostileServer], source: str
) -> None:
    registry, realm = servers("127.0.0.1"), servers("127.0.0.2")
    challenge = f'Bearer realm="{realm.url("/token")}",service="hostile"'
    registry.serve_image(REPO, "t", IMAGE, auth="Bearer for-alice", challenge=challenge)
    realm.routes["/token"] = Reply(body=b'{"token": "anonymous"}')
    config, auth = _creds(source, registry)
    d = daemon_factory(config)
    err = rpc_error(lambda: pull(d, ref(registry), auth))
    assert realm.seen, "the realm was asked for an anonymous token"
    assert realm.authorizations() == []
    assert BASIC not in registry.authorizations()
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not sent to its token realm" in (err.details() or ""), err.details()
    assert_clean_and_alive(d)


@pytest.mark.parametrize("source", ["config", "auth_config"])
def test_an_https_realm_on_another_host_gets_the_credentials(
    daemon_factory: Callable[..., Daemon], servers: Callable[..., HostileServer], short_tmp: Any, source: str
) -> None:
    """Docker Hub's case: registry-1.docker.io names https://auth.docker.io/token."""
    cert, key = self_signed(short_tmp, "127.0.0.2")
    registry, realm = servers("127.0.0.1"), servers("127.0.0.2", tls=(cert, key))
    challenge = f'Bearer realm="{realm.url("/token")}",service="hostile"'
    registry.serve_image(REPO, "t", IMAGE, auth="Bearer for-alice", challenge=challenge)
    realm.routes["/token"] = Reply(body=b'{"token": "for-alice"}', auth=BASIC, challenge='Basic realm="t"')
    config, auth = _creds(source, registry)
    d = daemon_factory(config, env={"SSL_CERT_FILE": str(cert)})
    assert pull(d, ref(registry), auth) == IMAGE.id
    assert realm.authorizations() == [BASIC]


@pytest.mark.parametrize("source", ["config", "auth_config"])
@pytest.mark.parametrize("kind", ["bearer", "basic"])
def test_a_realm_named_by_a_redirected_to_host_never_gets_credentials(
    daemon_factory: Callable[..., Daemon], servers: Callable[..., HostileServer], source: str, kind: str
) -> None:
    registry, store = servers("127.0.0.1"), servers("127.0.0.3")
    registry.serve_image(REPO, "t", IMAGE)  # public: the first challenge the pull meets is the store's
    layer = IMAGE.layers[0].blob.digest
    registry.routes[f"/v2/{REPO}/blobs/{layer}"].status = 307
    registry.routes[f"/v2/{REPO}/blobs/{layer}"].headers = {"location": store.url(f"/store/{layer}")}
    own = f'Bearer realm="{store.url("/token")}"' if kind == "bearer" else 'Basic realm="store"'
    store.routes[f"/store/{layer}"] = Reply(body=IMAGE.layers[0].blob.data, auth="never", challenge=own)
    store.routes["/token"] = Reply(body=b'{"token": "stolen"}')
    config, auth = _creds(source, registry)
    d = daemon_factory(config)
    err = rpc_error(lambda: pull(d, ref(registry), auth))
    assert store.requests("/store/"), "the redirect was followed"
    assert store.requests("/token") == [] and store.authorizations() == []
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "a redirect" in (err.details() or ""), err.details()
    assert_clean_and_alive(d)


def test_redirects_drop_the_authorization_header(
    daemon_factory: Callable[..., Daemon], servers: Callable[..., HostileServer]
) -> None:
    registry, store = servers("127.0.0.1"), servers("127.0.0.3")
    registry.serve_image(REPO, "t", IMAGE, auth=BASIC, challenge='Basic realm="registry"')
    for blob in IMAGE.blobs:
        registry.routes[f"/v2/{REPO}/blobs/{blob.digest}"].status = 302
        registry.routes[f"/v2/{REPO}/blobs/{blob.digest}"].headers = {
            "location": store.url(f"/s/{blob.digest}")
        }
        store.routes[f"/s/{blob.digest}"] = Reply(body=blob.data)
    config, _ = _creds("config", registry)
    d = daemon_factory(config)
    assert pull(d, ref(registry)) == IMAGE.id
    assert len(store.seen) == 2 and store.authorizations() == []
    assert BASIC in registry.authorizations()


@pytest.mark.parametrize(
    ("location", "words"), [("file:///etc/passwd", "redirected to"), ("/v2/loop", "more than 5")]
)
def test_bad_redirects_are_refused(
    daemon_factory: Callable[..., Daemon], servers: Callable[..., HostileServer], location: str, words: str
) -> None:
    server = servers()
    server.serve_image(REPO, "t", IMAGE)
    server.routes[f"/v2/{REPO}/manifests/t"] = Reply(status=301, headers={"location": location})
    server.routes["/v2/loop"] = Reply(status=302, headers={"location": "/v2/loop"})
    d = daemon_factory()
    err = rpc_error(lambda: pull(d, ref(server)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert words in (err.details() or ""), err.details()
    assert_clean_and_alive(d)


def test_sha512_digests_are_verified_and_kept_apart(
    daemon_factory: Callable[..., Daemon], servers: Callable[..., HostileServer]
) -> None:
    """A digest is sha256 or sha512: a manifest pulled by its sha512 digest and a layer named by one are
    checked with sha512 and stored under blobs/sha512 (docker-registry itself knows sha256 only)."""
    server = servers()
    layer = IMAGE.layers[0].blob
    layer512 = "sha512:" + hashlib.sha512(layer.data).hexdigest()
    body = canonical(edited(MANIFEST, "layers.0.digest", layer512))
    by512 = "sha512:" + hashlib.sha512(body).hexdigest()
    wrong = "sha512:" + hashlib.sha512(body + b" ").hexdigest()
    server.serve_manifest(REPO, [by512, wrong], body, MEDIA_OCI_MANIFEST)
    server.routes[f"/v2/{REPO}/blobs/{layer512}"] = Reply(body=layer.data)
    server.serve_blob(REPO, IMAGE.config)
    d = daemon_factory()
    name = f"{server.host}/{REPO}@{by512}"
    assert pull(d, name) == IMAGE.id
    stored = leftovers(d)["blobs"]
    assert f"sha512/{by512[7:]}" in stored and f"sha512/{layer512[7:]}" in stored, stored
    d.restart()  # the record, sha512 digests and all, passes the checks at start
    assert list(status(d, name).image.repo_digests) == [name]
    err = rpc_error(lambda: pull(d, f"{server.host}/{REPO}@{wrong}"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "digest" in (err.details() or "")
    d.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=name)))
    assert_clean_and_alive(d)
