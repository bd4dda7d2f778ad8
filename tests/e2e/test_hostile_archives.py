"""Hostile image layers against a real daemon, pulled from Debian's docker-registry on loopback.

A corpus of layers written byte by byte (tests/hostile_layers.py): header bombs, a sparse-file bomb,
decompression bombs, a directory chain 5000 deep, a path longer than PATH_MAX. Each pull ends in a
clear gRPC status naming what was refused, leaves nothing on disk, does not blow up the daemon's
memory (its peak resident size, from /proc), and the daemon stays up and restarts. Layers within the
bounds (a sparse file under the cap, a chain as deep as allowed) pull cleanly and go without a trace.
And a daemon whose state holds a layer dir an older Calyx unpacked 5000 deep starts and removes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from critest.images import Push, push_all
from critest.oci import Entry, Layer, make_image, make_layer
from tests import hostile_layers as h
from tests.daemon import Daemon
from tests.image_fixtures import LoopbackRegistry

MiB = h.MiB
MAX_DEPTH = 512  # the deepest a layer's tree may go (cri/images/tarbounds.py)
CAP = 64 * MiB  # images.max_layer_unpacked_bytes of the daemon under test
RSS_GROWTH_LIMIT = 100 * MiB  # the old unpacker grew by ~780 MiB on the PAX header bomb alone
PULL_TIMEOUT = 120

FAILED = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
# tag -> (layer, the status its pull must end in, a fragment of the status's message)
CORPUS: dict[str, tuple[Callable[[], Layer], grpc.StatusCode, str]] = {
    "pax-header-bomb": (lambda: h.pax_header_bomb(192 * MiB), FAILED, "PAX header of 201326592 bytes"),
    "gnu-long-name-bomb": (lambda: h.gnu_longname_bomb(192 * MiB), FAILED, "GNU long name header"),
    "sparse-bomb": (lambda: h.sparse_bomb(256 * MiB), EXHAUSTED, "file 'sparse' alone is 268435456 bytes"),
    "gzip-bomb": (lambda: h.zeros_bomb(512 * MiB), EXHAUSTED, "file 'zeros' alone is 536870912 bytes"),
    "zstd-bomb": (lambda: h.zeros_bomb(512 * MiB, "zstd"), EXHAUSTED, "file 'zeros' alone"),
    "trailing-bomb": (lambda: h.trailing_bomb(512 * MiB), EXHAUSTED, "unpacks to more than"),
    "deep-chain": (lambda: h.deep_chain(5000), FAILED, f"{MAX_DEPTH + 1} levels deep, more than {MAX_DEPTH}"),
    "long-path": (lambda: h.long_path(5000), FAILED, "more than 4094"),
}


def insecure(host: str, **images: object) -> dict[str, object]:
    return {"images": {"registries": {host: {"insecure": True}}, **images}}


def pull(d: Daemon, ref: str) -> str:
    request = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
    return str(d.images.PullImage(request, timeout=PULL_TIMEOUT).image_ref)


def remove_image(d: Daemon, ref: str) -> None:
    d.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=PULL_TIMEOUT)


def listed(d: Daemon) -> list[str]:
    return [i.id for i in d.images.ListImages(pb.ListImagesRequest()).images]


def stored(d: Daemon) -> dict[str, list[str]]:
    root = d.root / "images"
    return {
        "ingest": sorted(os.listdir(root / "ingest")),
        "blobs": sorted(os.listdir(root / "blobs/sha256")),
        "layers": sorted(os.listdir(root / "layers")),
    }


def nothing_stored(d: Daemon) -> bool:
    return listed(d) == [] and stored(d) == {"ingest": [], "blobs": [], "layers": []}


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> None:
    """Make VmHWM (the peak resident size) start again from the current one (proc(5), clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def test_hostile_layers_end_in_a_clear_status_and_leave_nothing(
    daemon_factory: Callable[..., Daemon], scratch_registry: LoopbackRegistry
) -> None:
    pushes = [Push("calyx-test/hostile", [tag], make_image([make()])) for tag, (make, _, _) in CORPUS.items()]
    small = make_image([make_layer([Entry("small", data=b"small\n")])])
    pushes.append(Push("calyx-test/hostile", ["small"], small))
    push_all(scratch_registry.host, pushes)
    d = daemon_factory(insecure(scratch_registry.host, max_layer_unpacked_bytes=CAP))
    assert d.proc is not None
    pid = d.proc.pid

    remove_image(d, pull(d, scratch_registry.ref("calyx-test/hostile:small")))  # the registry client loaded
    baseline = status_kib(pid, "VmRSS") * 1024
    reset_peak_rss(pid)
    for tag, (_, code, fragment) in CORPUS.items():
        with pytest.raises(grpc.RpcError) as err:
            pull(d, scratch_registry.ref(f"calyx-test/hostile:{tag}"))
        assert err.value.code() == code, (tag, err.value.details())
        assert fragment in err.value.details(), (tag, err.value.details())
        if code == EXHAUSTED:  # names the layer (its blob's digest) and the cap
            layer_digest = next(p for p in pushes if p.tags == [tag]).image.layers[0].blob.digest  # type: ignore[union-attr]
            assert layer_digest in err.value.details() and str(CAP) in err.value.details(), (
                err.value.details()
            )
        assert nothing_stored(d), (tag, stored(d))
    growth = status_kib(pid, "VmHWM") * 1024 - baseline
    assert growth < RSS_GROWTH_LIMIT, f"the daemon's peak RSS grew by {growth / MiB:.0f} MiB"
    assert d.proc.poll() is None
    d.restart()
    assert nothing_stored(d)


def test_layers_within_the_bounds_pull_cleanly_and_go_without_a_trace(
    daemon_factory: Callable[..., Daemon], scratch_registry: LoopbackRegistry
) -> None:
    sparse = Push("calyx-test/bounded", ["sparse"], make_image([h.sparse_bomb(32 * MiB)]))
    deep = Push("calyx-test/bounded", ["deep"], make_image([h.deep_chain(MAX_DEPTH - 1)]))
    push_all(scratch_registry.host, [sparse, deep])
    d = daemon_factory(insecure(scratch_registry.host, max_layer_unpacked_bytes=CAP))
    for tag in ("sparse", "deep"):
        pull(d, scratch_registry.ref(f"calyx-test/bounded:{tag}"))
    (sparse_dir,) = [p for p in (d.root / "images/layers").iterdir() if (p / "sparse").exists()]
    st = os.stat(sparse_dir / "sparse")
    assert st.st_size == 32 * MiB and st.st_blocks * 512 <= 64 * 1024  # its holes stayed holes
    for tag in ("sparse", "deep"):
        remove_image(d, scratch_registry.ref(f"calyx-test/bounded:{tag}"))
    assert nothing_stored(d)


def test_a_layer_an_older_calyx_unpacked_5000_deep_is_removed_at_start(
    daemon_factory: Callable[..., Daemon],
) -> None:
    """What the issue saw: such a layer made every later start die in recovery (RecursionError)."""
    d = daemon_factory()
    d.stop()
    layers = d.root / "images/layers"
    for name in ("ab" * 32, "tmp-0123456789abcdef-01234567"):  # garbage, and a half-done unpack
        (layers / name).mkdir()
        fd = os.open(layers / name, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(5000):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(fd)
    d.start()
    assert os.listdir(layers) == []
    assert "cleanup failed" not in d.log()
