"""What every runtime in a run shares: the loopback registry with the test images, and temp dirs.

The registry and the image builder are the images helper's (tests/registry.py, critest/): the test
suite's busybox layer (with hard-link modes fixed, see busybox_layer), a pause image for the reference
runtime, and an image with one big layer of random bytes (incompressible, so MB/s means bytes moved).
"""

from __future__ import annotations

import functools
import gzip
import io
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from critest.images import PATH_ENV, Push, base_layer, big_image, push_all
from critest.oci import Image, Layer, layer_from_tar, make_image
from tests.registry import Registry

BUSYBOX_REPO = "calyx-test/busybox"
BIG_REPO = "calyx-test/big"
PAUSE_REPO = "pause"
PAUSE_TAG = "3.9"


@dataclass
class Images:
    registry: Registry
    busybox: str  # references as every runtime pulls them
    big: str
    big_bytes: int
    pause: str  # the pause image under the upstream name (pulled through a mirror)

    def stop(self) -> None:
        self.registry.stop()


@functools.cache
def busybox_layer() -> Layer:
    """critest's busybox layer with each hard link given its target's mode.

    The builder writes the applets' hard links with mode 0644; an unpacker that applies each entry's
    mode to its path (Python's tarfile, containerd) then leaves busybox not executable, and the
    reference cannot start a container. Real tar files carry the target's mode on a link entry.
    """
    raw = gzip.decompress(base_layer().blob.data)
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(raw)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        members = src.getmembers()
        modes = {m.name: m.mode for m in members if m.isreg()}
        for m in members:
            if m.islnk() and m.linkname in modes:
                m.mode = modes[m.linkname]
            dst.addfile(m, src.extractfile(m) if m.isreg() else None)
    return layer_from_tar(out.getvalue())


def bench_image(config: dict[str, object] | None = None, extra: list[Layer] | None = None) -> Image:
    return make_image([busybox_layer(), *(extra or [])], {"Env": [PATH_ENV], "Cmd": ["sh"], **(config or {})})


def start_registry(base: Path, big_mb: int, port: int = 0) -> Images:
    """The registry on 127.0.0.1:``port`` (0: a free one) with the benchmark's images pushed."""
    storage = base / "registry"
    storage.mkdir(parents=True)
    registry = Registry(base, storage)
    if port:
        registry.port, registry.host = port, f"127.0.0.1:{port}"
    registry.start()
    try:
        big_layers = big_image(big_mb).image
        assert big_layers is not None
        big = bench_image(extra=big_layers.layers[1:])
        pause = bench_image({"Entrypoint": ["sleep", "2147483647"], "Cmd": []})
        pushes = [
            Push(BUSYBOX_REPO, ["latest"], bench_image()),
            Push(PAUSE_REPO, [PAUSE_TAG], pause),
            Push(BIG_REPO, ["latest"], big),
        ]
        push_all(registry.host, pushes)
    except BaseException:
        registry.stop()
        raise
    return Images(
        registry=registry,
        busybox=f"{registry.host}/{BUSYBOX_REPO}:latest",
        big=f"{registry.host}/{BIG_REPO}:latest",
        big_bytes=sum(len(b.data) for b in big.blobs),
        pause=f"registry.k8s.io/{PAUSE_REPO}:{PAUSE_TAG}",
    )


def busybox_rootfs_tar() -> bytes:
    """The busybox image's one layer (gzip), for the floor's bundle."""
    return busybox_layer().blob.data


def make_base() -> Path:
    """A short private dir (unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="cxb-", dir="/tmp"))


def remove_base(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
