"""What every runtime in a run shares: the loopback registry with the test images, and temp dirs.

The registry and the images are the images helper's (tests/registry.py, critest/images.py): the same
busybox the test suite runs, a pause image for the reference runtime, and an image with one big layer
of random bytes (incompressible, so MB/s means bytes moved) for pulls.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from critest.images import Push, base_layer, big_image, calyx_images, critest_images, push_all
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


def start_registry(base: Path, big_mb: int) -> Images:
    storage = base / "registry"
    storage.mkdir(parents=True)
    registry = Registry(base, storage).start()
    try:
        busybox = next(p for p in calyx_images() if p.repo == BUSYBOX_REPO)
        pause = next(p for p in critest_images() if p.repo == PAUSE_REPO)
        big = big_image(big_mb)
        pushes: list[Push] = [busybox, dataclasses.replace(pause, tags=[PAUSE_TAG]), big]
        push_all(registry.host, pushes)
    except BaseException:
        registry.stop()
        raise
    assert big.image is not None
    return Images(
        registry=registry,
        busybox=f"{registry.host}/{BUSYBOX_REPO}:latest",
        big=f"{registry.host}/{BIG_REPO}:latest",
        big_bytes=sum(len(b.data) for b in big.image.blobs),
        pause=f"registry.k8s.io/{PAUSE_REPO}:{PAUSE_TAG}",
    )


def busybox_rootfs_tar() -> bytes:
    """The busybox image's one layer (gzip), for the floor's bundle."""
    return base_layer().blob.data


def make_base() -> Path:
    """A short private dir (unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="cxb-", dir="/tmp"))


def remove_base(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
