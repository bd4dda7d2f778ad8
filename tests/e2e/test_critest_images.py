"""The test-image builder's CLI pushes every image critest and our tests name into a real registry."""

from __future__ import annotations

import subprocess
import sys

import httpx

from critest.images import DYNAMIC_BUSYBOX, calyx_images, critest_images


def cli(command: str, registry: str, timeout: float) -> str:
    """``python -m critest.images <command> --registry <registry>``, which must succeed: its output."""
    return subprocess.run(
        [sys.executable, "-m", "critest.images", command, "--registry", registry],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    ).stdout


def test_cli_pushes_every_image_with_its_tags(scratch_registry) -> None:
    out = cli("push", scratch_registry.host, timeout=300)
    lines = out.splitlines()
    expected = [(p.repo, t) for p in calyx_images() + critest_images() for t in p.tags]
    assert len(lines) == len(expected)
    for repo, tag in expected:
        tags = httpx.get(f"http://{scratch_registry.host}/v2/{repo}/tags/list", timeout=10).json()["tags"]
        assert tag in tags, (repo, tag)
    # critest's "different tags, same image" and "different images" sets.
    same = {line.split()[1] for line in lines if "/test-image-tags:" in line}
    different = {line.split()[1] for line in lines if "/test-image-1:" in line or "/test-image-2:" in line}
    assert len(same) == 1 and len(different) == 2


def test_critest_busybox_uses_the_dynamic_build_when_available() -> None:
    push = next(p for p in critest_images() if p.repo.endswith("e2e-test-images/busybox"))
    assert push.image is not None
    layer = push.image.layers[0].blob.data
    import gzip
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        names = tar.getnames()
    assert "bin/sh" in names and "bin/busybox" in names
    if DYNAMIC_BUSYBOX.exists():
        assert any(n.startswith("lib/x86_64-linux-gnu/libc.so") for n in names)


def test_mirror_config_serves_upstream_names_from_the_local_registry(daemon_factory, image_registry) -> None:
    from cri.api import api_pb2 as pb

    dropin = cli("mirror-config", image_registry.host, timeout=60)
    d = daemon_factory(start=False)
    (d.base / "calyx.d").mkdir()
    (d.base / "calyx.d/50-mirrors.toml").write_text(dropin)
    d.start()
    for name in ["gcr.io/k8s-staging-cri-tools/test-image-user-uid", "busybox", "registry.k8s.io/pause:3.10"]:
        d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=name)), timeout=120)
    tags = {t for i in d.images.ListImages(pb.ListImagesRequest()).images for t in i.repo_tags}
    assert tags == {
        "gcr.io/k8s-staging-cri-tools/test-image-user-uid:latest",
        "docker.io/library/busybox:latest",
        "registry.k8s.io/pause:3.10",
    }
