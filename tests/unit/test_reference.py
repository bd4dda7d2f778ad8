"""Image references are normalised as containerd and CRI-O do, and bad ones are INVALID_ARGUMENT."""

from __future__ import annotations

import pytest

from calyx_base.errors import InvalidArgument
from cri.images.auth import Credentials, parse_challenge
from cri.images.layers import chain_ids
from cri.images.reference import normalise_id, parse

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("user/app", "docker.io/user/app:latest"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("localhost/app", "localhost/app:latest"),
        ("127.0.0.1:5000/a/b/c:tag", "127.0.0.1:5000/a/b/c:tag"),
        ("host:5000/a/b", "host:5000/a/b:latest"),
        (f"busybox@{D}", f"docker.io/library/busybox@{D}"),
        (f"gcr.io/x/y:tag@{D}", f"gcr.io/x/y:tag@{D}"),
        ("a.b/c__d-e.f_g", "a.b/c__d-e.f_g:latest"),
    ],
)
def test_normalisation(text: str, expected: str) -> None:
    assert str(parse(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " busybox",
        "Busybox",
        "docker.io/Library/busybox",
        "busybox:",
        "busybox:tag with space",
        "busybox:" + "x" * 129,
        "busybox@sha256:abc",
        "busybox@md5:" + "a" * 32,
        "host:port/a",
        "a//b",
        "a/-b",
        "-host.io/a",
        "a..b",
        "x" * 300,
    ],
)
def test_invalid_references(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse(text)


def test_digest_reference_has_no_default_tag() -> None:
    ref = parse(f"gcr.io/x/y@{D}")
    assert ref.tag == "" and ref.digest == D and ref.object == D
    assert ref.tagged == ""
    assert ref.with_digest(D) == f"gcr.io/x/y@{D}"


def test_ids() -> None:
    assert normalise_id("ab" * 32) == D
    assert normalise_id(D) == D
    assert normalise_id("sha256:abc") is None


def test_chain_ids_follow_the_oci_definition() -> None:
    import hashlib

    a, b = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    assert chain_ids([a, b]) == [a, "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()]


def test_challenge_parsing() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="http://h/token",service="reg",scope="repository:a/b:pull"'
    )
    assert scheme == "bearer"
    assert params == {"realm": "http://h/token", "service": "reg", "scope": "repository:a/b:pull"}
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_auth_config_auth_field_is_base64_user_password() -> None:
    from cri.api import api_pb2 as pb

    creds = Credentials.from_auth_config(pb.AuthConfig(auth="YWxpY2U6czNjcjN0"))
    assert (creds.username, creds.password) == ("alice", "s3cr3t")
    with pytest.raises(InvalidArgument):
        Credentials.from_auth_config(pb.AuthConfig(auth="not base64!"))
