"""Layer unpacking within bounds: no archive may take the node's memory, disk or the daemon's stack.

Each hostile layer is refused with a clear error (UnsafeLayer for a malformed or abusive archive,
LayerTooLarge over images.max_layer_unpacked_bytes) while the process's memory stays bounded
(tracemalloc's peak, which counts what tarfile would have read into memory), or unpacks cleanly
when it is within bounds (sparse files keep their holes).
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from cri.images.tarbounds import MAX_DEPTH, MAX_HEADER_BYTES, MAX_PATH_BYTES, MAX_SPARSE_ENTRIES
from cri.images.unpack import LayerTooLarge, UnsafeLayer, unpack
from critest.oci import Entry, Layer, layer_from_tar, tar_bytes
from tests import hostile_layers as h

MiB = h.MiB
CAP = 64 * MiB


def unpack_layer(tmp: Path, layer: Layer, cap: int = CAP) -> tuple[Path, int]:
    """Unpack into a new dir under ``tmp``; returns the dir and the peak of Python memory meanwhile."""
    case = Path(tempfile.mkdtemp(dir=tmp))
    blob = case / "blob"
    blob.write_bytes(layer.blob.data)
    dest = case / "dest"
    dest.mkdir()
    tracemalloc.start()
    try:
        unpack(blob, dest, layer.diff_id, cap, "sha256:layerdigest")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return dest, peak


def refused(tmp: Path, layer: Layer, error: type[Exception], match: str, cap: int = CAP) -> list[str]:
    """Unpack ``layer``, which must fail with ``error``; returns what it left in its dir."""
    before = set(tmp.iterdir())
    with pytest.raises(error, match=match) as caught:
        unpack_layer(tmp, layer, cap)
    if error is LayerTooLarge:
        assert "sha256:layerdigest" in str(caught.value) and str(cap) in str(caught.value)
    (case,) = set(tmp.iterdir()) - before
    return os.listdir(case / "dest")


HEADER_BOMBS: dict[str, Callable[[], Layer]] = {
    "pax": lambda: h.pax_header_bomb(32 * MiB),
    "gnu_long_name": lambda: h.gnu_longname_bomb(32 * MiB),
}


@pytest.mark.parametrize("bomb", sorted(HEADER_BOMBS))
def test_header_bombs_are_refused_before_tarfile_reads_them(tmp_path: Path, bomb: str) -> None:
    blob = tmp_path / "blob"
    layer = HEADER_BOMBS[bomb]()
    blob.write_bytes(layer.blob.data)
    (tmp_path / "dest").mkdir()
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeLayer, match=f"header of {32 * MiB} bytes, more than {MAX_HEADER_BYTES}"):
            unpack(blob, tmp_path / "dest", layer.diff_id, CAP)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB  # tarfile alone would have read the 32 MiB header, then copied it
    assert os.listdir(tmp_path / "dest") == []


def test_gnu_long_link_bomb_is_refused(tmp_path: Path) -> None:
    raw = h.header("././@LongLink", 8 * MiB, tarfile.GNUTYPE_LONGLINK) + b"l" * 8 * MiB + h.END
    refused(tmp_path, layer_from_tar(raw), UnsafeLayer, "GNU long link header")


def test_a_chain_of_extension_headers_is_refused_not_recursed(tmp_path: Path) -> None:
    """tarfile follows one extension header to the next by recursion: 5000 of them were a
    RecursionError; more than a few in a row are refused."""
    chain = h.pax_member({"comment": "x"}) * 5000
    refused(
        tmp_path, layer_from_tar(chain + h.small_file() + h.END), UnsafeLayer, "extension headers in a row"
    )


def test_global_pax_headers_are_bounded_in_all(tmp_path: Path) -> None:
    member = h.pax_member({"comment": "g" * 200_000}, tarfile.XGLTYPE) + h.small_file()
    refused(tmp_path, layer_from_tar(member * 8 + h.END), UnsafeLayer, "global PAX headers")


def test_honest_extension_headers_still_work(tmp_path: Path) -> None:
    long_name = "dir/" + "n" * 150
    entries = [Entry("dir", "dir"), Entry(long_name, data=b"long", xattrs={"user.k": "v" * 1000})]
    raw = h.pax_member({"comment": "git archive"}, tarfile.XGLTYPE) + tar_bytes(entries)
    dest, _ = unpack_layer(tmp_path, layer_from_tar(raw))
    assert (dest / long_name).read_bytes() == b"long"
    assert os.getxattr(dest / long_name, "user.k") == b"v" * 1000


def test_a_sparse_file_within_the_cap_keeps_its_holes(tmp_path: Path) -> None:
    dest, peak = unpack_layer(tmp_path, h.sparse_bomb(32 * MiB))
    st = os.stat(dest / "sparse")
    assert st.st_size == 32 * MiB
    assert st.st_blocks * 512 <= 64 * 1024  # the stored block, not 32 MiB of zeros
    with open(dest / "sparse", "rb") as f:
        f.seek(32 * MiB - h.BLOCK)
        assert f.read().startswith(h.SPARSE_TAIL)
        f.seek(0)
        assert f.read(4096) == b"\0" * 4096
    assert peak < 8 * MiB


def test_a_pax_sparse_file_keeps_its_data_and_holes(tmp_path: Path) -> None:
    raw = h.pax_sparse(10 * MiB, [(4096, 10), (8 * MiB, 100)]) + h.END
    dest, _ = unpack_layer(tmp_path, layer_from_tar(raw))
    data = (dest / "pax-sparse").read_bytes()
    assert len(data) == 10 * MiB
    assert data[4096:4106] == b"s" * 10 and data[8 * MiB : 8 * MiB + 100] == b"s" * 100
    assert data.count(b"s") == 110


def test_a_sparse_bomb_over_the_cap_is_refused_before_a_block_is_written(tmp_path: Path) -> None:
    left = refused(
        tmp_path, h.sparse_bomb(256 * MiB), LayerTooLarge, "file 'sparse' alone is 268435456 bytes"
    )
    assert left == []


def test_sparse_maps_out_of_bounds_or_endless_are_refused(tmp_path: Path) -> None:
    outside = h.gnu_sparse_header("s", MiB, [(MiB, 512)]) + b"x" * 512 + h.END
    refused(tmp_path, layer_from_tar(outside), UnsafeLayer, "sparse map is out of order or out of bounds")
    more_than_stored = h.gnu_sparse_header("s", MiB, [(0, 512)])
    more_than_stored = more_than_stored[:124] + b"%011o\0" % 0 + more_than_stored[136:]  # claims 0 stored
    more_than_stored = more_than_stored[:148] + b" " * 8 + more_than_stored[156:]
    more_than_stored = more_than_stored[:148] + b"%06o\0 " % sum(more_than_stored) + more_than_stored[156:]
    refused(
        tmp_path, layer_from_tar(more_than_stored + h.small_file() + h.END), UnsafeLayer, "more data than"
    )
    endless = bytearray(h.gnu_sparse_header("s", MiB, [(0, 512)]))
    endless[482] = 1  # "another map block follows", and every block says so again
    endless[148:156] = b" " * 8
    endless[148:156] = b"%06o\0 " % sum(endless)
    block = bytearray(512)
    block[504] = 1
    raw = bytes(endless) + bytes(block) * (MAX_SPARSE_ENTRIES // 21 + 10) + h.END
    refused(tmp_path, layer_from_tar(raw), UnsafeLayer, "sparse map of more than")
    huge_count = h.pax_sparse(MiB, [(0, 10)], count=10**12) + h.END
    refused(tmp_path, layer_from_tar(huge_count), UnsafeLayer, "sparse map of more than")


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_decompression_bombs_stop_at_the_cap(tmp_path: Path, compression: str) -> None:
    assert refused(tmp_path, h.zeros_bomb(100 * MiB, compression), LayerTooLarge, "file 'zeros' alone") == []


def test_what_follows_the_archive_counts_too(tmp_path: Path) -> None:
    refused(tmp_path, h.trailing_bomb(100 * MiB), LayerTooLarge, "unpacks to more than")


def test_many_small_files_count_their_headers(tmp_path: Path) -> None:
    entries = [Entry(f"f{i}", data=b"x") for i in range(3000)]  # 3000 x 1 KiB of tar, 3000 bytes of data
    refused(
        tmp_path, layer_from_tar(tar_bytes(entries)), LayerTooLarge, "unpacks to more than", cap=1024 * 1024
    )


def test_depth_is_bounded(tmp_path: Path) -> None:
    dest, _ = unpack_layer(tmp_path, h.deep_chain(MAX_DEPTH - 1))
    assert (dest / ("d/" * (MAX_DEPTH - 1) + "bottom")).read_text() == "bottom\n"
    refused(tmp_path, h.deep_chain(5000), UnsafeLayer, f"levels deep, more than {MAX_DEPTH}")


def test_path_and_name_lengths_are_bounded(tmp_path: Path) -> None:
    refused(tmp_path, h.long_path(5000), UnsafeLayer, f"more than {MAX_PATH_BYTES}")
    refused(
        tmp_path, layer_from_tar(tar_bytes([Entry("n" * 256, data=b"x")])), UnsafeLayer, "longer than 255"
    )
    link = Entry("l", "symlink", target="t" * 5000)
    refused(tmp_path, layer_from_tar(tar_bytes([link])), UnsafeLayer, "symlink target over")


def test_numbers_out_of_range_are_refused_not_crashed_on(tmp_path: Path) -> None:
    info = tarfile.TarInfo("big-uid")
    info.uid = 2**40  # a base-256 number in the header
    raw = info.tobuf(format=tarfile.GNU_FORMAT) + h.END
    refused(tmp_path, layer_from_tar(raw), UnsafeLayer, "big-uid")
    negative = bytearray(h.header("neg", 0, tarfile.REGTYPE))
    negative[124:136] = b"\xff" * 12  # base-256 -1
    negative[148:156] = b" " * 8
    negative[148:156] = b"%06o\0 " % sum(negative)
    refused(tmp_path, layer_from_tar(bytes(negative) + h.END), UnsafeLayer, "negative size")
