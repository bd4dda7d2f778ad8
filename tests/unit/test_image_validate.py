"""The checks every registry value goes through (cri/images/validate.py), the store paths built from them,
and the rules for where a pull speaks plain HTTP and where credentials may go."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from calyx_base.errors import CalyxError, DeadlineExceeded
from cri.config import ImagesConfig, Registry
from cri.images import validate
from cri.images.auth import Credentials, may_send_credentials
from cri.images.content import ContentStore
from cri.images.layers import LayerStore
from cri.images.registry import endpoints, is_loopback, scheme_for
from cri.images.transport import Http
from cri.images.validate import InvalidImage
from critest.oci import Entry, make_image, make_index, make_layer

HEX = "ab" * 32
IMAGE = make_image([make_layer([Entry("a", data=b"a")]), make_layer([Entry("b", data=b"b")])])


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (f"sha256:{HEX}", True),
        ("sha512:" + "cd" * 64, True),
        (f"sha256:{HEX[:-1]}", False),
        (f"sha256:{HEX}0", False),
        (f"sha256:{HEX.upper()}", False),
        (f"SHA256:{HEX}", False),
        ("sha512:" + "cd" * 32, False),
        ("md5:" + "ab" * 16, False),
        ("sha256:/etc", False),
        ("sha256:../../../../etc", False),
        ("sha256:", False),
        (f"sha256:{HEX}\n", False),
        (5, False),
        (None, False),
    ],
)
def test_digests(value: Any, ok: bool) -> None:
    assert validate.is_digest(value) is ok


def test_digest_of_uses_the_algorithm_asked_for() -> None:
    assert validate.digest_of(b"x") == "sha256:" + hashlib.sha256(b"x").hexdigest()
    assert validate.digest_of(b"x", "sha512:" + "0" * 128) == "sha512:" + hashlib.sha512(b"x").hexdigest()
    with pytest.raises(ValueError):
        validate.split("sha256:/etc")


def test_chain_ids_come_from_sha256_diff_ids_only() -> None:
    a, b = f"sha256:{HEX}", "sha256:" + "cd" * 32
    assert validate.chain_ids([a, b]) == [a, "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()]
    for bad in ("sha256:/etc", "sha512:" + "cd" * 64, ""):
        with pytest.raises(InvalidImage):
            validate.chain_ids([bad])


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("application/vnd.oci.image.layer.v1.tar+gzip", True),
        ("text/plain", True),
        ("application/x-" + "a" * 125, True),
        ("application/x-" + "a" * 126, False),
        ("application", False),
        ("application/json; charset=utf-8", False),
        ("/json", False),
        ("application/-json", False),
        ("application/jso n", False),
        (7, False),
    ],
)
def test_media_type_grammar(value: Any, ok: bool) -> None:
    check = validate.Checker("img", "manifest")
    if ok:
        assert check.media_type(value, "mediaType", None) == value
    else:
        with pytest.raises(InvalidImage, match="mediaType"):
            check.media_type(value, "mediaType", None)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("https://auth.docker.io/token", True),
        ("http://127.0.0.1:5000/token?x=1", True),
        ("https://[::1]:443/t", True),
        ("file:///etc/passwd", False),
        ("ftp://host/x", False),
        ("https://user:pass@host/t", False),
        ("https:///path", False),
        ("https://host:99999/", False),
        ("https://host/a b", False),
        ("https://host/\x00", False),
        ("https://host/" + "a" * 3000, False),
        ("/relative", False),
        (None, False),
    ],
)
def test_urls(value: Any, ok: bool) -> None:
    if ok:
        assert validate.url(value) == value
    else:
        with pytest.raises(ValueError):
            validate.url(value)


@pytest.mark.parametrize("value", [-1, True, 1.5, "3", None, validate.MAX_BLOB_BYTES + 1])
def test_sizes(value: Any) -> None:
    with pytest.raises(InvalidImage, match=r"x\.size"):
        validate.Checker("img", "manifest").size(value, "x.size", validate.MAX_BLOB_BYTES)


def test_sound_documents_pass() -> None:
    manifest = validate.manifest(json.loads(IMAGE.manifest.data), "img")
    assert manifest.config.digest == IMAGE.config.digest
    assert [d.digest for d in manifest.layers] == [layer.blob.digest for layer in IMAGE.layers]
    entries = validate.index(json.loads(make_index({"amd64": IMAGE}).data), "img")
    assert [(e.os, e.architecture, e.descriptor.digest) for e in entries] == [
        ("linux", "amd64", IMAGE.manifest.digest)
    ]
    config = json.loads(IMAGE.config.data)
    assert validate.config(config, "img", 2) == [layer.diff_id for layer in IMAGE.layers]


def test_errors_name_the_image_the_document_and_the_field_and_stay_short() -> None:
    doc = json.loads(IMAGE.config.data)
    doc["rootfs"]["diff_ids"][1] = "sha256:/" + "x" * 100_000
    with pytest.raises(InvalidImage) as err:
        validate.config(doc, "reg/app:v1", 2)
    assert str(err.value).startswith("image reg/app:v1: config rootfs.diff_ids[1] 'sha256:/xxx")
    assert len(str(err.value)) < 300


def test_stored_records_are_checked_like_pulls() -> None:
    diff_ids = [layer.diff_id for layer in IMAGE.layers]
    chains = validate.chain_ids(diff_ids)
    record: dict[str, Any] = {
        "id": IMAGE.id,
        "repo_tags": ["reg/app:v1"],
        "repo_digests": [],
        "manifest_digest": IMAGE.manifest.digest,
        "config_digest": IMAGE.id,
        "blobs": [IMAGE.manifest.digest, IMAGE.id],
        "layers": [
            {"digest": layer.blob.digest, "diff_id": d, "chain_id": c, "size": 1}
            for layer, d, c in zip(IMAGE.layers, diff_ids, chains, strict=True)
        ],
        "size": 2,
        "pulled_at": 1,
    }
    assert validate.stored_record(record, IMAGE.id).chain_ids == chains
    swapped = {**record, "layers": [{**record["layers"][0], "chain_id": chains[1]}, record["layers"][1]]}
    with pytest.raises(InvalidImage, match="chain ids"):
        validate.stored_record(swapped, IMAGE.id)
    with pytest.raises(InvalidImage, match="not the key"):
        validate.stored_record(record, "sha256:" + "0" * 64)
    with pytest.raises(InvalidImage):
        validate.stored_record({"layers": [{"digest": "sha256:/etc"}]}, IMAGE.id)


def test_store_paths_stay_under_their_roots(tmp_path: Path) -> None:
    content = ContentStore(tmp_path / "images")
    assert content.path("sha512:" + "cd" * 64).parent == (tmp_path / "images/blobs/sha512").resolve()
    for bad in ("sha256:/etc", "sha256:../../x", "sha1:" + "a" * 40):
        with pytest.raises(CalyxError):
            content.path(bad)
    layers = LayerStore(tmp_path / "images/layers", max_unpacked_bytes=1 << 30)
    with pytest.raises(CalyxError):
        layers.path("sha256:/etc")
    (layers.root / HEX).symlink_to("/etc")
    with pytest.raises(CalyxError, match="does not lie under"):
        layers.path(f"sha256:{HEX}")
    assert f"sha256:{HEX}" not in layers.chain_ids()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.3.2.1", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("localhost.example.com", False),
        ("registry.k8s.io", False),
        ("[::2]:5000", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_schemes() -> None:
    config = ImagesConfig(registries={"10.0.0.1:5000": Registry(insecure=True)})
    assert scheme_for("localhost:5000", config) == "http"
    assert scheme_for("127.0.0.1:5000", config) == "http"
    assert scheme_for("10.0.0.1:5000", config) == "http"
    assert scheme_for("10.0.0.2:5000", config) == "https"
    assert [str(e) for e in endpoints("docker.io", config)] == ["https://registry-1.docker.io"]
    off = ImagesConfig(loopback_plain_http=False)
    assert scheme_for("127.0.0.1:5000", off) == "https"
    assert [str(e) for e in endpoints("localhost:5000", off)] == ["https://localhost:5000"]


@pytest.mark.parametrize(
    ("realm", "scheme", "host", "allowed"),
    [
        ("https://auth.docker.io/token", "https", "registry-1.docker.io", True),
        ("https://127.0.0.2/token", "http", "127.0.0.1", True),
        ("http://127.0.0.1:5001/token", "http", "127.0.0.1", True),
        ("http://127.0.0.2:5001/token", "http", "127.0.0.1", False),
        ("http://registry.example/token", "https", "registry.example", False),
        ("http://auth.example/token", "https", "registry.example", False),
    ],
)
def test_where_credentials_may_go(realm: str, scheme: str, host: str, allowed: bool) -> None:
    assert may_send_credentials(realm, scheme, host) is allowed


def test_credential_fingerprints() -> None:
    alice = Credentials("alice", "wonderland")
    assert alice.fingerprint == Credentials("alice", "wonderland").fingerprint
    assert alice.fingerprint != Credentials("alice", "other").fingerprint
    assert alice.fingerprint != Credentials("alice", "wonderland", server_address="elsewhere").fingerprint
    assert Credentials().fingerprint == ""
    assert "wonderland" not in alice.fingerprint


def test_no_request_starts_after_the_deadline() -> None:
    http = Http(deadline=0.0)
    try:
        with pytest.raises(DeadlineExceeded):
            http.send("GET", "http://127.0.0.1:1/", "probe")
    finally:
        http.close()


@pytest.mark.parametrize(
    "images",
    [
        {"pull_timeout_seconds": 0.0},
        {"pull_timeout_seconds": -5.0},
        {"pull_timeout_seconds": float("inf")},
        {"registries": {"r.example": {"mirrors": ["ftp://m.example"]}}},
        {"registries": {"r.example": {"mirrors": ["http://"]}}},
    ],
)
def test_bad_image_options_stop_the_daemon_at_start(tmp_path: Path, images: dict[str, Any]) -> None:
    import tomli_w

    from cri import config as config_mod

    path = tmp_path / "calyx.toml"
    path.write_text(tomli_w.dumps({"images": images}))
    with pytest.raises(config_mod.ConfigError, match=r"images\."):
        config_mod.load(path, None)
