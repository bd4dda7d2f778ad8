"""Hostile images pushed to Debian's docker-registry on loopback, pulled by the real daemon over gRPC.

The registry stores image configs as opaque blobs, so a config can say anything: diff ids that look like
paths (``sha256:/etc`` once made a container's layer the host's /etc), fields of the wrong JSON type,
megabytes of padding. Every such image is refused with FAILED_PRECONDITION naming the image and the
field, and leaves nothing on disk. Image records read back from the store at start are held to the same
grammar, and a layer directory is only ever reused under the chain id its verified diff ids make.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from typing import Any

import grpc

from cri.api import api_pb2 as pb
from critest.images import Push, base_layer, push_all
from critest.oci import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_MANIFEST,
    Blob,
    Entry,
    Image,
    Layer,
    canonical,
    layer_from_tar,
    make_layer,
)
from tests.daemon import Daemon
from tests.e2e.test_images import images_root, layer_dirs, leftovers, listed, pull, rpc_error
from tests.image_fixtures import LoopbackRegistry

MiB = 1024 * 1024
NOTHING = {"ingest": [], "blobs": [], "layers": []}
TOP = make_layer([Entry("top", data=b"the layer above\n")])


def image_of(config: Any, layers: list[Layer]) -> Image:
    """An image whose config blob is exactly ``config`` (any JSON, or raw bytes)."""
    data = config if isinstance(config, bytes) else canonical(config)
    blob = Blob(MEDIA_OCI_CONFIG, data)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": blob.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    return Image(blob, layers, Blob(MEDIA_OCI_MANIFEST, canonical(manifest)))


def config_doc(diff_ids: list[Any], runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"], **(runtime or {})},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }


def refusals(d: Daemon, names: dict[str, str]) -> list[str]:
    """Each of ``names`` (reference -> what the error must name) pulled: what was not refused with
    FAILED_PRECONDITION naming the image and the field."""
    wrong = []
    for name, field in names.items():
        try:
            wrong.append(f"{name}: pulled as {pull(d, name)}")
        except grpc.RpcError as err:
            details = err.details() or ""
            if (
                err.code() != grpc.StatusCode.FAILED_PRECONDITION
                or field not in details
                or name not in details
            ):
                wrong.append(f"{name}: {err.code()} {details}")
    return wrong


def assert_clean_and_alive(d: Daemon) -> None:
    assert listed(d) == []
    assert leftovers(d) == NOTHING
    d.restart()
    assert listed(d) == [] and leftovers(d) == NOTHING


# The busybox layer is real; the diff id the config gives the layer under it is not.
DIFF_IDS: dict[str, Any] = {
    "absolute": "sha256:/etc",
    "traversal": "sha256:../../../../../etc",
    "root": "sha256:/",
    "short": "sha256:" + "a" * 63,
    "long": "sha256:" + "a" * 65,
    "uppercase": "sha256:" + TOP.diff_id[7:].upper(),
    "unknown-algorithm": "md5:" + "a" * 32,
    "sha512": "sha512:" + "a" * 128,  # a digest Calyx verifies for blobs, never computed for layers
    "empty": "",
    "number": 5,
    "nul": "sha256:" + "a" * 63 + "\0",
}


def test_diff_ids_that_are_not_sha256_digests_are_refused(
    daemon_factory: Callable[..., Daemon], scratch_registry: LoopbackRegistry
) -> None:
    """Once, ``sha256:/etc`` made ``layerDirs`` ["/etc", ...]: a container read the host's /etc/shadow."""
    busybox = base_layer()
    pushes = [
        Push("hostile/diff-id", [name], image_of(config_doc([bad, busybox.diff_id]), [TOP, busybox]))
        for name, bad in DIFF_IDS.items()
    ]
    push_all(scratch_registry.host, pushes)
    d = daemon_factory()
    names = {scratch_registry.ref(f"hostile/diff-id:{n}"): "config rootfs.diff_ids[0]" for n in DIFF_IDS}
    assert refusals(d, names) == []
    assert_clean_and_alive(d)


CONFIGS: dict[str, tuple[Any, str]] = {
    "env-string": (config_doc([TOP.diff_id], {"Env": "PATH=/bin"}), "config config.Env"),
    "cmd-number": (config_doc([TOP.diff_id], {"Cmd": 5}), "config config.Cmd"),
    "entrypoint-numbers": (
        config_doc([TOP.diff_id], {"Entrypoint": ["sh", 1]}),
        "config config.Entrypoint[1]",
    ),
    "user-list": (config_doc([TOP.diff_id], {"User": ["root"]}), "config config.User"),
    "workdir-nul": (config_doc([TOP.diff_id], {"WorkingDir": "/a\0b"}), "config config.WorkingDir"),
    "volumes-list": (config_doc([TOP.diff_id], {"Volumes": ["/data"]}), "config config.Volumes"),
    "labels-number": (config_doc([TOP.diff_id], {"Labels": {"a": 1}}), "config config.Labels"),
    "runtime-not-object": ({**config_doc([TOP.diff_id]), "config": "sh"}, "config config"),
    "rootfs-type": ({**config_doc([TOP.diff_id]), "rootfs": {"type": "tar", "diff_ids": []}}, "rootfs.type"),
    "diff-ids-count": (config_doc([TOP.diff_id, TOP.diff_id]), "config rootfs.diff_ids"),
    "not-an-object": (b"[1, 2]", "config document"),
    "not-json": (b"{", "config is not JSON"),
    "nesting-bomb": (b"[" * 100_000 + b"]" * 100_000, "config is not JSON"),
    "over-cap": (config_doc([TOP.diff_id], {"Labels": {"pad": "x" * (9 * MiB)}}), "manifest config.size"),
}


def test_configs_breaking_the_grammar_are_refused(
    daemon_factory: Callable[..., Daemon], scratch_registry: LoopbackRegistry
) -> None:
    """Fields containers are built from must have their OCI types (``"Cmd": 5`` once failed
    CreateContainer with INTERNAL); a config is read only up to 8 MiB."""
    pushes = [Push("hostile/config", [name], image_of(doc, [TOP])) for name, (doc, _) in CONFIGS.items()]
    push_all(scratch_registry.host, pushes)
    d = daemon_factory()
    assert (
        refusals(d, {scratch_registry.ref(f"hostile/config:{n}"): f for n, (_, f) in CONFIGS.items()}) == []
    )
    assert_clean_and_alive(d)


def test_a_planted_symlink_is_never_taken_for_a_layer(
    daemon_factory: Callable[..., Daemon], scratch_registry: LoopbackRegistry
) -> None:
    """Defence in depth: a chain id's directory that resolves elsewhere is refused, not mounted."""
    push_all(
        scratch_registry.host, [Push("hostile/planted", ["t"], image_of(config_doc([TOP.diff_id]), [TOP]))]
    )
    d = daemon_factory()
    planted = images_root(d) / "layers" / TOP.diff_id.split(":", 1)[1]
    planted.symlink_to("/etc")
    try:
        err = rpc_error(lambda: pull(d, scratch_registry.ref("hostile/planted:t")))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "does not lie under" in (err.details() or ""), err.details()
        assert listed(d) == []
    finally:
        planted.unlink()
    assert_clean_and_alive(d)


def _store(d: Daemon) -> Any:
    from cri.store import Store

    return Store(d.root / "calyx.db")


def test_image_records_read_at_start_are_held_to_the_same_grammar(
    daemon_factory: Callable[..., Daemon], scratch_registry: LoopbackRegistry
) -> None:
    """A damaged or old record is dropped at start (never a crash, never a path outside the stores)."""
    push_all(scratch_registry.host, [Push("hostile/kept", ["t"], image_of(config_doc([TOP.diff_id]), [TOP]))])
    d = daemon_factory()
    kept = pull(d, scratch_registry.ref("hostile/kept:t"))
    d.stop()
    store = _store(d)
    try:
        good = store.get("image", kept)
        assert good is not None
        layer = good["layers"][0]
        fake = "sha256:" + "e" * 64
        bad: dict[str, dict[str, Any]] = {
            "chain-id-path": {"layers": [{**layer, "chain_id": "sha256:/etc"}]},
            "diff-id-path": {"layers": [{**layer, "diff_id": "sha256:/etc", "chain_id": "sha256:/etc"}]},
            "chain-id-not-its-diff-ids": {
                "layers": [layer, {**layer, "chain_id": layer["chain_id"]}],
            },
            "layer-missing-keys": {"layers": [{"digest": layer["digest"]}]},
            "config-digest-path": {"config_digest": "sha256:../../../../etc/passwd"},
            "blob-traversal": {"blobs": [*good["blobs"], "sha256:../../x"]},
            "size-string": {"size": "big"},
            "tags-not-strings": {"repo_tags": [1]},
        }
        for name, change in bad.items():
            record = {**good, "id": fake, "config_digest": fake, "repo_tags": [f"x/{name}:t"], **change}
            fake = "sha256:" + format(int(fake[7:], 16) + 1, "064x")
            store.put("image", record["id"], record)
        store.put("image", "sha256:/etc", {**good, "id": "sha256:/etc"})
        store.put("image", "not-a-record", {"garbage": True})
    finally:
        store.close()
    d.start()
    assert [i.id for i in listed(d)] == [kept]
    dirs = layer_dirs(d, kept)
    assert all(p.parent == images_root(d) / "layers" for p in dirs), dirs
    log = d.log()
    assert log.count("image record refused") == 10, log[-3000:]
    store = _store(d)
    try:
        assert list(store.list("image")) == [kept]
    finally:
        store.close()
    d.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=kept)))
    assert_clean_and_alive(d)


def empty_files(count: int) -> Layer:
    """A layer of ``count`` empty files, 1000 to a directory: headers only, ~10 bytes each gzipped, and a
    few syscalls each to unpack."""
    info = tarfile.TarInfo()
    info.mode, info.mtime = 0o644, 1
    headers = []
    for i in range(count):
        info.name = f"d{i // 1000}/f{i}"
        headers.append(info.tobuf(tarfile.GNU_FORMAT))
    return layer_from_tar(b"".join(headers) + b"\0" * 1024)


def test_a_layer_that_cannot_unpack_in_time_ends_the_pull_at_its_deadline(
    daemon_factory: Callable[..., Daemon], scratch_registry: LoopbackRegistry
) -> None:
    """200,000 members (2 MB to download, some 20 s to unpack here): the pull's deadline
    stops the unpack inside the layer (it was checked only between layers, so this one was unpacked
    whole, long after the deadline, and the pull succeeded), and the half-unpacked layer is removed."""
    layer = empty_files(200_000)
    image = image_of(config_doc([layer.diff_id]), [layer])
    push_all(scratch_registry.host, [Push("hostile/slow-unpack", ["t"], image)])
    d = daemon_factory({"images": {"pull_timeout_seconds": 4.0}})
    request = pb.PullImageRequest(image=pb.ImageSpec(image=scratch_registry.ref("hostile/slow-unpack:t")))
    call = d.images.PullImage.future(request)  # no client deadline: the daemon's own applies
    try:
        err = rpc_error(lambda: call.result(timeout=600))
    finally:
        call.cancel()
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    assert "unpacking stopped at the pull's deadline" in (err.details() or ""), err.details()
    assert_clean_and_alive(d)
