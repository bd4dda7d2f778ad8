"""PullImage honours AuthConfig.server_address: kubelet's credentials go to that registry host only.

Against Debian's docker-registry with htpasswd basic auth on loopback. A recording proxy in front of it
(``Recorder``, tests/registry.py's proxy with no fault) keeps the Authorization header of every request
it forwards, which shows whether the credentials reached it; it also serves as a mirror of the registry.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from cri.api import api_pb2 as pb
from cri.images.registry import registry_host
from critest.images import calyx_images
from tests.daemon import Daemon
from tests.image_fixtures import USERS, LoopbackRegistry
from tests.registry import FaultyProxy
from tests.waiting import wait_for

IMAGE = "calyx-test/busybox:latest"
USER = next(iter(USERS))
ELSEWHERE = "registry.elsewhere.test:5000"  # only ever a string: nothing is sent to it


class Recorder(FaultyProxy):
    """A proxy that forwards everything as it is and keeps each request's Authorization header."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, digest="", mode="pass")

    @property
    def authorizations(self) -> list[str]:
        return [a for _path, a in self.seen if a is not None]


@pytest.fixture
def recorder(basic_registry: LoopbackRegistry) -> Iterator[Recorder]:
    proxy = Recorder(basic_registry.host)
    yield proxy
    proxy.close()


def _auth(server_address: str) -> pb.AuthConfig:
    return pb.AuthConfig(username=USER, password=USERS[USER], server_address=server_address)


def _pull(daemon: Daemon, ref: str, auth: pb.AuthConfig) -> str:
    request = pb.PullImageRequest(image=pb.ImageSpec(image=ref), auth=auth)
    return str(daemon.images.PullImage(request, timeout=120).image_ref)


def _basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()


def _daemon(factory: Callable[..., Daemon], registries: dict[str, Any]) -> Daemon:
    return factory({"images": {"registries": registries}})


def _mirrored(factory: Callable[..., Daemon], registry: LoopbackRegistry, mirror: Recorder) -> Daemon:
    """A daemon pulling ``registry``'s images through ``mirror`` first."""
    registries = {
        registry.host: {"insecure": True, "mirrors": [f"http://{mirror.host}"]},
        mirror.host: {"insecure": True},
    }
    return _daemon(factory, registries)


@pytest.mark.parametrize(
    "form", ["{host}", "http://{host}", "https://{host}/", "{host}/v2/", "HTTP://{host}/v1/"]
)
def test_credentials_for_the_registry_pulled_from_are_sent(
    daemon_factory: Callable[..., Daemon], recorder: Recorder, form: str
) -> None:
    d = _daemon(daemon_factory, {recorder.host: {"insecure": True}})
    assert _pull(d, f"{recorder.host}/{IMAGE}", _auth(form.format(host=recorder.host))).startswith("sha256:")
    assert _basic(USER) in recorder.authorizations


def test_credentials_for_another_registry_are_not_sent(
    daemon_factory: Callable[..., Daemon], recorder: Recorder
) -> None:
    d = _daemon(daemon_factory, {recorder.host: {"insecure": True}})
    with pytest.raises(grpc.RpcError) as err:
        _pull(d, f"{recorder.host}/{IMAGE}", _auth(f"https://{ELSEWHERE}/v2/"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    details = err.value.details()
    assert "refused access (HTTP 401)" in details and ELSEWHERE in details, details
    assert recorder.seen, "the registry was asked"
    assert recorder.authorizations == []  # the credentials never reached it
    assert d.images.ListImages(pb.ListImagesRequest(), timeout=30).images == []


def test_empty_server_address_sends_to_the_registry_pulled_from(
    daemon_factory: Callable[..., Daemon], recorder: Recorder
) -> None:
    d = _daemon(daemon_factory, {recorder.host: {"insecure": True}})
    assert _pull(d, f"{recorder.host}/{IMAGE}", _auth("")).startswith("sha256:")
    assert _basic(USER) in recorder.authorizations


def test_credentials_for_the_registry_skip_its_mirror(
    daemon_factory: Callable[..., Daemon], basic_registry: LoopbackRegistry, recorder: Recorder
) -> None:
    """The mirror (the recorder) gets no credentials and refuses; the registry itself gets them."""
    d = _mirrored(daemon_factory, basic_registry, recorder)
    for address in (basic_registry.host, ""):
        recorder.seen.clear()
        assert _pull(d, basic_registry.ref(IMAGE), _auth(address)).startswith("sha256:")
        assert recorder.seen, "the mirror was tried first"
        assert recorder.authorizations == []


def test_credentials_for_the_mirror_host_go_to_the_mirror(
    daemon_factory: Callable[..., Daemon], basic_registry: LoopbackRegistry, recorder: Recorder
) -> None:
    d = _mirrored(daemon_factory, basic_registry, recorder)
    assert _pull(d, basic_registry.ref(IMAGE), _auth(f"http://{recorder.host}/")).startswith("sha256:")
    assert _basic(USER) in recorder.authorizations
    assert any("/blobs/" in path for path, _auth in recorder.seen)  # served by the mirror


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("docker.io", "docker.io"),
        ("https://Registry.Example:5000/v2/", "registry.example:5000"),
        ("registry.example:5000/v2/", "registry.example:5000"),
        ("https://registry.example:443", "registry.example"),
        ("http://registry.example:80/", "registry.example"),
        ("registry.example:443", "registry.example:443"),
        ("[::1]:5000", "[::1]:5000"),
    ],
)
def test_server_address_forms(address: str, host: str) -> None:
    assert registry_host(address) == host


def _busybox_layer() -> str:
    image = next(p.image for p in calyx_images() if p.repo == IMAGE.split(":")[0])
    assert image is not None
    return image.layers[0].blob.digest


def test_concurrent_pulls_share_a_download_only_with_the_same_credentials(
    daemon_factory: Callable[..., Daemon], basic_registry: LoopbackRegistry
) -> None:
    """A pull with wrong credentials, arriving while alice's pull of the same image waits on a layer,
    gets the registry's own answer (401), not alice's image."""
    proxy = FaultyProxy(basic_registry.host, _busybox_layer(), "gate")
    try:
        d = _daemon(daemon_factory, {})  # the proxy is on loopback: plain HTTP without config
        name = f"{proxy.host}/{IMAGE}"
        results: dict[str, Any] = {}

        def run(who: str, auth: pb.AuthConfig) -> None:
            try:
                results[who] = _pull(d, name, auth)
            except grpc.RpcError as exc:
                results[who] = exc

        alice = threading.Thread(target=run, args=("alice", _auth(proxy.host)))
        alice.start()
        wait_for(lambda: proxy.blob_requests >= 1, "alice's pull waiting on the layer")
        wrong = pb.AuthConfig(username=USER, password="not-" + USERS[USER], server_address=proxy.host)
        mallory = threading.Thread(target=run, args=("mallory", wrong))
        mallory.start()
        mallory.join(30)  # it must not wait for alice's download
        proxy.release()
        alice.join(120)
        mallory.join(120)
        assert isinstance(results.get("mallory"), grpc.RpcError), results
        assert results["mallory"].code() == grpc.StatusCode.PERMISSION_DENIED
        assert str(results["alice"]).startswith("sha256:"), results
    finally:
        proxy.close()
