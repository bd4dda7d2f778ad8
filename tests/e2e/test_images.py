"""ImageService end to end: a real calyx daemon over gRPC pulling from Debian's docker-registry on loopback.

No test may make the daemon contact anything but loopback: every reference names a 127.0.0.1 registry
or a registry whose mirror on loopback answers first.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from calyx_base.errors import NotFound as NotFoundError
from cri.api import api_pb2 as pb
from critest.images import Push, busybox_image, calyx_images, critest_images, push_all
from critest.oci import Entry, make_layer
from tests.daemon import Daemon
from tests.image_fixtures import LoopbackRegistry
from tests.registry import FaultyProxy
from tests.waiting import wait_for

PULL_TIMEOUT = 120


def config_id(repo: str) -> str:
    """The image id (config digest) the builder gave ``repo``."""
    for push in calyx_images() + critest_images():
        if push.repo == repo and push.image is not None:
            return push.image.config.digest
    raise KeyError(repo)


def insecure(*hosts: str, **extra: Any) -> dict[str, Any]:
    registries: dict[str, Any] = {h: {"insecure": True} for h in hosts}
    for host, settings in extra.get("registries", {}).items():
        registries.setdefault(host, {}).update(settings)
    images: dict[str, Any] = {"registries": registries}
    if "pinned" in extra:
        images["pinned"] = extra["pinned"]
    return {"images": images}


def spec(name: str) -> pb.ImageSpec:
    return pb.ImageSpec(image=name)


def pull(d: Daemon, name: str, auth: pb.AuthConfig | None = None, timeout: float = PULL_TIMEOUT) -> str:
    request = pb.PullImageRequest(image=spec(name))
    if auth is not None:
        request.auth.CopyFrom(auth)
    return d.images.PullImage(request, timeout=timeout).image_ref


def status(d: Daemon, name: str, verbose: bool = False) -> pb.ImageStatusResponse:
    return d.images.ImageStatus(pb.ImageStatusRequest(image=spec(name), verbose=verbose))


def listed(d: Daemon) -> list[pb.Image]:
    return list(d.images.ListImages(pb.ListImagesRequest()).images)


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value


def images_root(d: Daemon) -> Path:
    return d.root / "images"


def leftovers(d: Daemon) -> dict[str, list[str]]:
    root = images_root(d)
    return {
        "ingest": sorted(os.listdir(root / "ingest")),
        "blobs": sorted(str(p.relative_to(root / "blobs")) for p in (root / "blobs").glob("*/*")),
        "layers": sorted(p for p in os.listdir(root / "layers") if not p.endswith(".usage")),
    }


def layer_dirs(d: Daemon, name: str) -> list[Path]:
    info = json.loads(status(d, name, verbose=True).info["info"])
    return [Path(p) for p in info["layerDirs"]]


@pytest.fixture
def plain(daemon_factory, image_registry: LoopbackRegistry) -> Daemon:
    return daemon_factory(insecure(image_registry.host))


# --- pulling ------------------------------------------------------------------------------------------


def test_pull_by_tag_gives_config_digest_id_names_and_unpacked_layers(plain: Daemon, image_registry) -> None:
    ref = image_registry.ref("calyx-test/busybox:1.35")
    image_id = pull(plain, ref)
    assert image_id == config_id("calyx-test/busybox")
    image = status(plain, ref).image
    assert image.id == image_id
    assert list(image.repo_tags) == [ref]
    manifest = image_registry.digests["calyx-test/busybox:1.35"]
    assert list(image.repo_digests) == [image_registry.ref(f"calyx-test/busybox@{manifest}")]
    assert image.size > 500_000
    (layer,) = layer_dirs(plain, ref)
    assert (layer / "bin/busybox").stat().st_mode & 0o111
    assert os.stat(layer / "bin/sh").st_ino == os.stat(layer / "bin/busybox").st_ino
    assert (layer / "etc/passwd").read_text().startswith("root:x:0:0")
    assert stat.S_IMODE(os.stat(layer / "tmp").st_mode) == 0o1777
    assert not leftovers(plain)["ingest"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_registry_on_loopback_speaks_plain_http_without_config(daemon_factory, image_registry, host):
    """As containerd and Docker do: no `insecure` entry is needed for localhost or 127.0.0.0/8."""
    d = daemon_factory()
    port = image_registry.host.rsplit(":", 1)[1]
    assert pull(d, f"{host}:{port}/calyx-test/busybox") == config_id("calyx-test/busybox")


def test_loopback_plain_http_can_be_turned_off(daemon_factory, image_registry) -> None:
    d = daemon_factory({"images": {"loopback_plain_http": False}})
    err = rpc_error(lambda: pull(d, image_registry.ref("calyx-test/busybox")))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "https://" in err.details() and "SSL" in err.details(), err.details()
    assert listed(d) == []


def test_pull_without_tag_means_latest_and_by_digest_keeps_the_digest(plain: Daemon, image_registry) -> None:
    image_id = pull(plain, image_registry.ref("calyx-test/busybox"))
    assert image_registry.ref("calyx-test/busybox:latest") in status(plain, image_id).image.repo_tags
    digest = image_registry.digests["calyx-test/web:latest"]
    by_digest = image_registry.ref(f"calyx-test/web@{digest}")
    web_id = pull(plain, by_digest)
    assert web_id == config_id("calyx-test/web")
    image = status(plain, by_digest).image
    assert list(image.repo_digests) == [by_digest] and list(image.repo_tags) == []
    both = image_registry.ref(f"calyx-test/web:latest@{digest}")
    assert pull(plain, both) == web_id
    assert image_registry.ref("calyx-test/web:latest") in status(plain, web_id).image.repo_tags


def test_wrong_digest_is_not_found_and_bad_references_are_invalid(plain: Daemon, image_registry) -> None:
    host = image_registry.host
    for bad in [
        "",
        f"{host}/UPPER/case",
        f"{host}/a@sha256:123",
        f"{host}/a//b",
        f"{host}/a:bad tag",
        f"{host}/a:",
    ]:
        err = rpc_error(lambda bad=bad: pull(plain, bad))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    missing = image_registry.ref("calyx-test/busybox@sha256:" + "0" * 64)
    assert rpc_error(lambda: pull(plain, missing)).code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(lambda: pull(plain, image_registry.ref("calyx-test/no-such-image:1")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert listed(plain) == []


@pytest.mark.parametrize("repo", ["calyx-test/zstd", "calyx-test/plain", "calyx-test/docker"])
def test_zstd_uncompressed_and_docker_schema2_images(plain: Daemon, image_registry, repo: str) -> None:
    image_id = pull(plain, image_registry.ref(repo))
    assert image_id == config_id(repo)
    dirs = layer_dirs(plain, image_id)
    assert (dirs[0] / "bin/busybox").exists()
    if repo == "calyx-test/zstd":
        assert (dirs[1] / "z").read_text() == "z\n"
    if repo == "calyx-test/plain":
        assert (dirs[1] / "p").read_text() == "p\n"


def test_index_picks_linux_amd64(plain: Daemon, image_registry) -> None:
    ref = image_registry.ref("calyx-test/multiarch")
    image_id = pull(plain, ref)
    assert layer_dirs(plain, image_id)[-1].joinpath("arch").read_text() == "amd64\n"
    index_digest = image_registry.digests["calyx-test/multiarch:latest"]
    assert list(status(plain, ref).image.repo_digests) == [
        image_registry.ref(f"calyx-test/multiarch@{index_digest}")
    ]


def test_multilayer_whiteouts_opaque_dirs_links_devices_xattrs(plain: Daemon, image_registry) -> None:
    image_id = pull(plain, image_registry.ref("calyx-test/multilayer"))
    base, second, third = layer_dirs(plain, image_id)
    assert (base / "bin/busybox").exists()
    b = os.stat(second / "data/b")
    assert (b.st_uid, b.st_gid, stat.S_IMODE(b.st_mode)) == (1000, 1000, 0o600)
    assert os.stat(second / "data/hard").st_ino == b.st_ino
    assert os.readlink(second / "data/link") == "b"
    null = os.stat(second / "data/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.stat(second / "data/fifo").st_mode)
    assert os.getxattr(second / "data/attr", "user.calyx") == b"yes"
    whiteout = os.stat(third / "data/a", follow_symlinks=False)
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(third / "data/dir", "trusted.overlay.opaque") == b"y"
    assert (third / "data/dir/new").read_text() == "new\n"


def test_shared_layers_are_downloaded_and_unpacked_once(plain: Daemon, image_registry) -> None:
    base_digest = busybox_image().layers[0].blob.digest
    log = image_registry.registry.log_file

    def base_gets() -> int:
        return log.read_text().count(f"/blobs/{base_digest} HTTP")

    before = base_gets()
    a = pull(plain, image_registry.ref("calyx-test/busybox"))
    b = pull(plain, image_registry.ref("calyx-test/web"))
    c = pull(plain, image_registry.ref("calyx-test/user-uid"))
    assert len({a, b, c}) == 3
    assert base_gets() - before == 1
    assert layer_dirs(plain, a)[0] == layer_dirs(plain, b)[0] == layer_dirs(plain, c)[0]
    # web and user-uid differ from busybox only in config: 1 layer dir; 1 layer, 3 configs, 3 manifests
    assert len(leftovers(plain)["layers"]) == 1
    assert len(leftovers(plain)["blobs"]) == 7


def test_images_survive_a_restart(plain: Daemon, image_registry) -> None:
    image_id = pull(plain, image_registry.ref("calyx-test/busybox"))
    plain.restart()
    assert [i.id for i in listed(plain)] == [image_id]
    assert layer_dirs(plain, image_id)[0].joinpath("bin/busybox").exists()


# --- mirrors and auth ---------------------------------------------------------------------------------


def test_mirrors_serve_upstream_names_in_order(daemon_factory, image_registry) -> None:
    host = image_registry.host
    mirrors = {"mirrors": ["http://127.0.0.1:1", f"http://{host}"]}
    d = daemon_factory(insecure(host, registries={"registry.k8s.io": mirrors, "gcr.io": {"mirrors": [host]}}))
    pause = pull(d, "registry.k8s.io/pause:3.10")
    assert pause == config_id("pause")
    assert list(status(d, pause).image.repo_tags) == ["registry.k8s.io/pause:3.10"]
    one = pull(d, "gcr.io/k8s-staging-cri-tools/test-image-tags:1")
    two = pull(d, "gcr.io/k8s-staging-cri-tools/test-image-tags:2")
    assert one == two
    assert sorted(status(d, one).image.repo_tags) == [
        "gcr.io/k8s-staging-cri-tools/test-image-tags:1",
        "gcr.io/k8s-staging-cri-tools/test-image-tags:2",
    ]
    # The same image by its direct name has the same id, and both names.
    assert pull(d, image_registry.ref("pause:3.10")) == pause
    assert len(status(d, pause).image.repo_tags) == 2


ALICE = pb.AuthConfig(username="alice", password="wonderland")


def assert_only_alice_pulls(d: Daemon, ref: str, wrong: pb.AuthConfig, repo: str) -> None:
    """Anonymous and ``wrong`` credentials are PERMISSION_DENIED; alice's pull the image of ``repo``."""
    assert rpc_error(lambda: pull(d, ref)).code() == grpc.StatusCode.PERMISSION_DENIED
    assert rpc_error(lambda: pull(d, ref, wrong)).code() == grpc.StatusCode.PERMISSION_DENIED
    assert pull(d, ref, ALICE) == config_id(repo)


def test_basic_auth(daemon_factory, basic_registry) -> None:
    d = daemon_factory(insecure(basic_registry.host))
    ref = basic_registry.ref("calyx-test/busybox")
    assert_only_alice_pulls(d, ref, pb.AuthConfig(username="alice", password="nope"), "calyx-test/busybox")
    encoded = pb.AuthConfig(auth="YWxpY2U6d29uZGVybGFuZA==")  # alice:wonderland
    assert pull(d, basic_registry.ref("calyx-test/web"), encoded) == config_id("calyx-test/web")
    assert listed(d)


def test_basic_auth_credentials_from_config(daemon_factory, basic_registry) -> None:
    creds = {basic_registry.host: {"username": "alice", "password": "wonderland"}}
    d = daemon_factory(insecure(basic_registry.host, registries=creds))
    assert pull(d, basic_registry.ref("calyx-test/busybox")) == config_id("calyx-test/busybox")


def test_token_auth_anonymous_credentials_identity_and_registry_tokens(
    daemon_factory, token_registry
) -> None:
    d = daemon_factory(insecure(token_registry.host))
    tokens = token_registry.token_server
    assert tokens is not None
    assert pull(d, token_registry.ref("public/busybox")) == config_id("calyx-test/busybox")
    private = token_registry.ref("calyx-test/web")
    assert_only_alice_pulls(d, private, pb.AuthConfig(username="alice", password="wrong"), "calyx-test/web")
    assert any(r.get("user") == "alice" for r in tokens.requests)
    uid = token_registry.ref("calyx-test/user-uid")
    assert pull(d, uid, pb.AuthConfig(identity_token="refresh-alice")) == config_id("calyx-test/user-uid")
    assert any(r["method"] == "POST" for r in tokens.requests)
    minted = tokens.sign(
        "alice", [{"type": "repository", "name": "calyx-test/user-name", "actions": ["pull"]}]
    )
    name = token_registry.ref("calyx-test/user-name")
    assert pull(d, name, pb.AuthConfig(registry_token=minted)) == config_id("calyx-test/user-name")


# --- failures leave nothing ---------------------------------------------------------------------------


def unique_image(tag: str, megabytes: int = 1) -> Push:
    data = os.urandom(megabytes * 1024 * 1024)
    return Push("calyx-test/unique", [tag], busybox_image(extra=[make_layer([Entry("blob", data=data)])]))


def push_unique(registry: LoopbackRegistry, tag: str, megabytes: int = 1) -> Push:
    """A new image (busybox and a layer of random bytes) pushed as ``calyx-test/unique:<tag>``."""
    push = unique_image(tag, megabytes)
    push_all(registry.host, [push])
    assert push.image is not None
    return push


def assert_nothing_stored(d: Daemon) -> None:
    assert listed(d) == []
    assert leftovers(d) == {"ingest": [], "blobs": [], "layers": []}


@dataclass
class FaultyPull:
    """A daemon that pulls ``ref`` through a proxy misbehaving on the image's own layer."""

    daemon: Daemon
    proxy: FaultyProxy
    ref: str


@pytest.fixture
def faulty_pull(daemon_factory, scratch_registry) -> Iterator[Callable[..., FaultyPull]]:
    """``faulty_pull(tag, mode, megabytes)``: pushes a unique image and starts a daemon behind a
    ``FaultyProxy`` in ``mode``; the proxies are closed at the end."""
    proxies: list[FaultyProxy] = []

    def make(tag: str, mode: str, megabytes: int) -> FaultyPull:
        push = push_unique(scratch_registry, tag, megabytes)
        assert push.image is not None
        proxy = FaultyProxy(scratch_registry.host, push.image.layers[1].blob.digest, mode)
        proxies.append(proxy)
        d = daemon_factory(insecure(proxy.host))
        return FaultyPull(d, proxy, f"{proxy.host}/calyx-test/unique:{tag}")

    yield make
    for proxy in proxies:
        proxy.close()


def test_corrupted_blob_is_refused_and_nothing_is_stored(daemon_factory, scratch_registry) -> None:
    push = push_unique(scratch_registry, "corrupt")
    assert push.image is not None
    layer = push.image.layers[1].blob
    path = scratch_registry.registry.blob_path("calyx-test/unique", layer.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    d = daemon_factory(insecure(scratch_registry.host))
    err = rpc_error(lambda: pull(d, scratch_registry.ref("calyx-test/unique:corrupt")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "digest" in err.details()
    assert_nothing_stored(d)


def test_registry_dying_mid_pull_leaves_nothing_visible(faulty_pull: Callable[..., FaultyPull]) -> None:
    f = faulty_pull("cut", "cut", megabytes=4)
    err = rpc_error(lambda: pull(f.daemon, f.ref))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert f.proxy.blob_requests == 1
    assert_nothing_stored(f.daemon)


def test_daemon_killed_mid_pull_cleans_temporary_files_at_start(
    faulty_pull: Callable[..., FaultyPull],
) -> None:
    f = faulty_pull("kill", "stall", megabytes=4)
    d = f.daemon
    errors: list[grpc.RpcError] = []

    def background() -> None:
        try:
            pull(d, f.ref)
        except grpc.RpcError as exc:
            errors.append(exc)

    thread = threading.Thread(target=background)
    thread.start()
    assert f.proxy.half_sent.wait(60)
    wait_for(lambda: bool(leftovers(d)["ingest"]), "a partial download in ingest/")
    d.kill9()
    thread.join(30)
    assert errors and errors[0].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    f.proxy.release()
    d.start()
    assert_nothing_stored(d)


def test_pull_honours_the_grpc_deadline(faulty_pull: Callable[..., FaultyPull]) -> None:
    f = faulty_pull("slow", "stall", megabytes=4)
    err = rpc_error(lambda: pull(f.daemon, f.ref, timeout=3))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The daemon gives up on its side too: the partial download goes away without a restart.
    wait_for(lambda: leftovers(f.daemon)["ingest"] == [] and "deadline" in f.daemon.log(), "the pull aborted")
    assert listed(f.daemon) == []


def test_concurrent_pulls_share_one_download(faulty_pull: Callable[..., FaultyPull]) -> None:
    f = faulty_pull("shared", "gate", megabytes=2)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(pull(f.daemon, f.ref))) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: f.proxy.blob_requests >= 1, "the first blob request")
    threading.Event().wait(1.0)  # give any duplicate download the chance to show itself
    f.proxy.release()
    for t in threads:
        t.join(120)
    assert len(results) == 4 and len(set(results)) == 1
    assert f.proxy.blob_requests == 1


def test_schema1_manifest_is_refused_clearly(daemon_factory, short_tmp) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = json.dumps({"schemaVersion": 1, "name": "old/app", "tag": "v1", "fsLayers": []}).encode()

    class Schema1(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Schema1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        d = daemon_factory(insecure(host))
        err = rpc_error(lambda: pull(d, f"{host}/old/app:v1"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "schema 1" in err.details()
    finally:
        server.shutdown()
        server.server_close()


ESCAPES = {
    "dotdot": [Entry("../../../../escape-dotdot", data=b"x")],
    "absolute": [Entry("/tmp/calyx-e2e-escape-absolute", data=b"x")],
    "symlink_then_file": [
        Entry("up", "symlink", target="../../../.."),
        Entry("up/escape-symlink", data=b"x"),
    ],
    "hardlink_out": [Entry("h", "link", target="../../../../calyx.toml")],
    "absolute_symlink_then_file": [
        Entry("root", "symlink", target="/tmp"),
        Entry("root/calyx-e2e-escape-abs", data=b"x"),
    ],
}


def test_malicious_layers_are_refused_and_write_nothing_outside(daemon_factory, scratch_registry) -> None:
    pushes = [
        Push("calyx-test/evil", [name], busybox_image(extra=[make_layer(entries)]))
        for name, entries in ESCAPES.items()
    ]
    push_all(scratch_registry.host, pushes)
    d = daemon_factory(insecure(scratch_registry.host))
    config_links = os.stat(d.config_file).st_nlink
    for name in ESCAPES:
        err = rpc_error(lambda name=name: pull(d, scratch_registry.ref(f"calyx-test/evil:{name}")))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, name
        assert "refused" in err.details(), err.details()
    assert listed(d) == []
    assert not [p for p in leftovers(d)["layers"] if p.startswith("tmp-")]
    found = [str(p) for p in d.base.rglob("escape-*")]
    assert found == []
    assert not Path("/tmp/calyx-e2e-escape-absolute").exists()
    assert not Path("/tmp/calyx-e2e-escape-abs").exists()
    assert os.stat(d.config_file).st_nlink == config_links


# --- the other RPCs -----------------------------------------------------------------------------------


def test_image_status_users_verbose_and_unknown(plain: Daemon, image_registry) -> None:
    cases = {"calyx-test/user-uid": ("uid", 1002), "calyx-test/user-uid-gid": ("uid", 1003)}
    for repo, (_, uid) in cases.items():
        image = status(plain, pull(plain, image_registry.ref(repo))).image
        assert image.HasField("uid") and image.uid.value == uid and image.username == ""
    named = status(plain, pull(plain, image_registry.ref("calyx-test/user-name"))).image
    assert named.username == "www-data" and not named.HasField("uid")
    response = status(plain, image_registry.ref("calyx-test/user-name"), verbose=True)
    info = json.loads(response.info["info"])
    assert info["imageSpec"]["config"]["User"] == "www-data"
    assert info["imageSpec"]["rootfs"]["diff_ids"]
    assert not status(plain, image_registry.ref("calyx-test/nothing-here")).HasField("image")
    assert not status(plain, "sha256:" + "1" * 64).HasField("image")


def test_list_images_filter_and_stream_images(plain: Daemon, image_registry) -> None:
    a = pull(plain, image_registry.ref("calyx-test/busybox"))
    b = pull(plain, image_registry.ref("calyx-test/web"))
    assert sorted(i.id for i in listed(plain)) == sorted([a, b])
    request = pb.ListImagesRequest(filter=pb.ImageFilter(image=spec(image_registry.ref("calyx-test/web"))))
    assert [i.id for i in plain.images.ListImages(request).images] == [b]
    by_id = pb.ListImagesRequest(filter=pb.ImageFilter(image=spec(a)))
    assert [i.id for i in plain.images.ListImages(by_id).images] == [a]
    streamed = [i.id for r in plain.images.StreamImages(pb.StreamImagesRequest()) for i in r.images]
    assert sorted(streamed) == sorted([a, b])


def test_remove_image_semantics(plain: Daemon, image_registry) -> None:
    one = image_registry.ref("k8s-staging-cri-tools/test-image-tags:1")
    two = image_registry.ref("k8s-staging-cri-tools/test-image-tags:2")
    image_id = pull(plain, one)
    assert pull(plain, two) == image_id
    plain.images.RemoveImage(pb.RemoveImageRequest(image=spec(one)))
    assert list(status(plain, image_id).image.repo_tags) == [two]
    assert not status(plain, one).HasField("image")
    plain.images.RemoveImage(pb.RemoveImageRequest(image=spec(two)))
    assert_nothing_stored(plain)
    # Unknown images: success, as kubelet expects.
    plain.images.RemoveImage(pb.RemoveImageRequest(image=spec("sha256:" + "2" * 64)))
    plain.images.RemoveImage(pb.RemoveImageRequest(image=spec(image_registry.ref("calyx-test/never:1"))))
    # By id: the image and all its names.
    image_id = pull(plain, one)
    pull(plain, two)
    plain.images.RemoveImage(pb.RemoveImageRequest(image=spec(image_id)))
    assert listed(plain) == []
    # By digest reference: the image.
    digest = image_registry.digests["calyx-test/web:latest"]
    pull(plain, image_registry.ref("calyx-test/web"))
    plain.images.RemoveImage(
        pb.RemoveImageRequest(image=spec(image_registry.ref(f"calyx-test/web@{digest}")))
    )
    assert listed(plain) == []


def test_remove_keeps_layers_other_images_share(plain: Daemon, image_registry) -> None:
    a = pull(plain, image_registry.ref("calyx-test/busybox"))
    b = pull(plain, image_registry.ref("calyx-test/multilayer"))
    plain.images.RemoveImage(pb.RemoveImageRequest(image=spec(b)))
    assert layer_dirs(plain, a)[0].joinpath("bin/busybox").exists()
    assert len(leftovers(plain)["layers"]) == 1


def test_image_fs_info_counts_image_content(plain: Daemon, image_registry) -> None:
    writable = plain.root / "containers/c0ffee/upper"  # before the first call: results are cached
    writable.mkdir(parents=True)
    (writable / "data").write_bytes(os.urandom(200_000))
    empty = plain.images.ImageFsInfo(pb.ImageFsInfoRequest())
    (fs,) = empty.image_filesystems
    assert fs.fs_id.mountpoint == str(images_root(plain))
    assert fs.used_bytes.value == 0
    pull(plain, image_registry.ref("calyx-test/busybox"))
    (full,) = plain.images.ImageFsInfo(pb.ImageFsInfoRequest()).image_filesystems
    assert full.used_bytes.value > 2_000_000  # ~1 MB compressed blob + ~2 MB unpacked busybox
    assert full.inodes_used.value > 250
    assert full.timestamp > 0
    try:
        (containers,) = plain.images.ImageFsInfo(pb.ImageFsInfoRequest()).container_filesystems
        assert containers.fs_id.mountpoint == str(plain.root / "containers")
        assert containers.used_bytes.value >= 200_000
        assert containers.inodes_used.value >= 4
    finally:
        import shutil

        shutil.rmtree(plain.root / "containers/c0ffee")


def test_pinned_images_from_config(daemon_factory, image_registry) -> None:
    pinned = image_registry.ref("calyx-test/busybox")
    d = daemon_factory(insecure(image_registry.host, pinned=[pinned]))
    a = pull(d, pinned)
    b = pull(d, image_registry.ref("calyx-test/web"))
    assert status(d, a).image.pinned is True
    assert status(d, b).image.pinned is False
    assert {i.id: i.pinned for i in listed(d)} == {a: True, b: False}


# --- layers as overlayfs lower dirs, recovery, tags moving, in-use refusal ---------------------------


def test_layer_dirs_stack_as_overlayfs_lower_dirs(plain: Daemon, image_registry, short_tmp: Path) -> None:
    import subprocess

    image_id = pull(plain, image_registry.ref("calyx-test/multilayer"))
    dirs = layer_dirs(plain, image_id)
    target, upper, work = short_tmp / "merged", short_tmp / "upper", short_tmp / "work"
    for p in (target, upper, work):
        p.mkdir()
    lower = ":".join(str(p) for p in reversed(dirs))
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)], check=True, timeout=30)
    try:
        assert (target / "bin/busybox").exists()
        assert not (target / "data/a").exists()  # whited out by the top layer
        assert (target / "data/b").read_text() == "b\n"
        assert sorted(os.listdir(target / "data/dir")) == ["new"]  # opaque: "old" is hidden
        assert os.readlink(target / "data/link") == "b"
    finally:
        subprocess.run(["umount", str(target)], check=True, timeout=30)


def test_start_drops_images_whose_content_is_gone_and_half_unpacked_dirs(
    plain: Daemon, image_registry
) -> None:
    keep = pull(plain, image_registry.ref("calyx-test/busybox"))
    lose = pull(plain, image_registry.ref("calyx-test/multilayer"))
    plain.stop()
    import shutil

    shutil.rmtree(layer_dirs_offline(plain, lose)[-1])
    (images_root(plain) / "layers/tmp-0123456789abcdef-deadbeef").mkdir()
    (images_root(plain) / "ingest/feedface.partial").write_bytes(b"x")
    plain.start()
    assert [i.id for i in listed(plain)] == [keep]
    assert leftovers(plain)["ingest"] == []
    assert len(leftovers(plain)["layers"]) == 1


def layer_dirs_offline(d: Daemon, image_id: str) -> list[Path]:
    """Layer dirs of an image read from the store file while the daemon is stopped."""
    from cri.images.model import ImageRecord
    from cri.store import Store

    store = Store(d.root / "calyx.db")
    try:
        record = ImageRecord.from_dict(store.get("image", image_id) or {})
    finally:
        store.close()
    return [images_root(d) / "layers" / c.split(":", 1)[1] for c in record.chain_ids]


def test_a_tag_moves_to_the_image_pulled_last(daemon_factory, scratch_registry) -> None:
    d = daemon_factory(insecure(scratch_registry.host))
    ref = scratch_registry.ref("calyx-test/unique:moving")
    push_unique(scratch_registry, "moving")
    first = pull(d, ref)
    push_unique(scratch_registry, "moving")
    second = pull(d, ref)
    assert first != second
    assert list(status(d, first).image.repo_tags) == []
    assert list(status(d, second).image.repo_tags) == [ref]
    assert status(d, ref).image.id == second


def test_pull_progress_is_logged(plain: Daemon, image_registry) -> None:
    pull(plain, image_registry.ref("calyx-test/multilayer"))
    lines = [line for line in plain.log().splitlines() if "pull complete" in line]
    assert lines and "layers=3" in lines[-1] and "bytes_total=" in lines[-1]
    assert any("layer unpacked" in line and "chain_id=" in line for line in plain.log().splitlines())


def test_remove_refuses_an_image_a_container_uses(image_registry, short_tmp: Path) -> None:
    """In process: the images subsystem asks its ImageUsers (the container records in the daemon)."""
    from calyx_base.cleanups import Cleanups
    from calyx_base.errors import FailedPrecondition
    from cri.config import load
    from cri.images.manager import ImageManager
    from cri.store import Store

    config = load(
        None,
        None,
        [f'state.root="{short_tmp}/lib"', f'images.registries."{image_registry.host}".insecure=true'],
    )

    class Users:
        in_use: set[str] = set()

        def uses_image(self, image_id: str) -> bool:
            return image_id in self.in_use

    store = Store(short_tmp / "lib/calyx.db")
    cleanups = Cleanups(3600)
    images = ImageManager(store, config.root / "images", config.images, cleanups, Users())
    images.recover()
    try:
        image_id = images.pull(image_registry.ref("calyx-test/busybox"))
        Users.in_use.add(image_id)
        with pytest.raises(FailedPrecondition, match="in use"):
            images.remove(image_id)
        with pytest.raises(FailedPrecondition, match="in use"):
            images.remove(image_registry.ref("calyx-test/busybox"))  # its last tag
        assert images.resolve(image_id).layer_dirs[0].joinpath("bin/busybox").exists()
        Users.in_use.clear()
        images.remove(image_id)
        with pytest.raises(NotFoundError):
            images.resolve(image_id)
    finally:
        images.close()
        cleanups.close()
        store.close()
