"""Layer unpacking: what a layer holds is reproduced exactly, and no archive can write outside its dir."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from calyx_base.errors import DeadlineExceeded
from cri.images.layers import LayerStore
from cri.images.unpack import OPAQUE_XATTR, UnsafeLayer, unpack
from cri.images.validate import chain_ids
from critest.oci import Entry, make_layer, tar_bytes

CAP = 1 << 30  # images.max_layer_unpacked_bytes for these tests


def write_layer(tmp: Path, entries: list[Entry], compression: str = "gzip") -> tuple[Path, str]:
    layer = make_layer(entries, compression)
    blob = tmp / f"blob-{compression}"
    blob.write_bytes(layer.blob.data)
    return blob, layer.diff_id


@pytest.fixture
def box(tmp_path: Path) -> dict[str, Path]:
    """``dest`` (the layer dir) inside ``outer``, with a ``victim`` dir beside it that must stay empty."""
    outer = tmp_path / "outer"
    dest = outer / "layer"
    victim = outer / "victim"
    for p in (dest, victim):
        p.mkdir(parents=True)
    return {"tmp": tmp_path, "outer": outer, "dest": dest, "victim": victim}


def everything_outside(box: dict[str, Path]) -> set[str]:
    found = set()
    for root, dirs, files in os.walk(box["outer"]):
        for name in dirs + files:
            path = Path(root, name)
            if box["dest"] not in (path, *path.parents):
                found.add(str(path.relative_to(box["outer"])))
    return found


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_unpack_keeps_types_owners_modes_times_xattrs_and_links(box, compression: str) -> None:
    entries = [
        Entry("./", "dir", mode=0o755),
        Entry("etc", "dir", mode=0o750, uid=5, gid=6, mtime=1_600_000_000),
        Entry("etc/conf", data=b"hello", mode=0o640, uid=1000, gid=1001, mtime=1_500_000_000),
        Entry("bin", "dir", mode=0o755),
        Entry("bin/tool", data=b"#!x", mode=0o4755),
        Entry("bin/alias", "link", target="bin/tool"),
        Entry("bin/sym", "symlink", target="/etc/passwd"),
        Entry("dev", "dir"),
        Entry("dev/null", "char", mode=0o666, major=1, minor=3),
        Entry("dev/loopx", "block", mode=0o600, major=7, minor=200),
        Entry("dev/pipe", "fifo", mode=0o620),
        Entry("x", data=b"attr", xattrs={"user.calyx": "v1", "trusted.overlay.redirect": "/etc"}),
        Entry("deep/a/b/c", data=b"implicit parents"),
    ]
    blob, diff_id = write_layer(box["tmp"], entries, compression)
    usage = unpack(blob, box["dest"], diff_id, CAP)
    d = box["dest"]
    st = os.stat(d / "etc/conf")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), int(st.st_mtime)) == (
        1000,
        1001,
        0o640,
        1_500_000_000,
    )
    assert (d / "etc/conf").read_bytes() == b"hello"
    st = os.stat(d / "etc")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), int(st.st_mtime)) == (5, 6, 0o750, 1_600_000_000)
    assert stat.S_IMODE(os.stat(d / "bin/tool").st_mode) == 0o4755
    assert os.stat(d / "bin/alias").st_ino == os.stat(d / "bin/tool").st_ino
    assert os.readlink(d / "bin/sym") == "/etc/passwd"
    null = os.stat(d / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK(os.stat(d / "dev/loopx").st_mode)
    assert stat.S_ISFIFO(os.stat(d / "dev/pipe").st_mode)
    assert os.getxattr(d / "x", "user.calyx") == b"v1"
    with pytest.raises(OSError):
        os.getxattr(d / "x", "trusted.overlay.redirect")
    assert (d / "deep/a/b/c").read_bytes() == b"implicit parents"
    assert usage.inodes == len(entries)


def test_whiteouts_become_overlay_whiteouts_and_opaque_dirs(box) -> None:
    entries = [
        Entry("data", "dir"),
        Entry("data/.wh.gone", data=b""),
        Entry("data/dir", "dir"),
        Entry("data/dir/.wh..wh..opq", data=b""),
        Entry("data/dir/new", data=b"n"),
        Entry(".wh..wh..opq", data=b""),
    ]
    blob, diff_id = write_layer(box["tmp"], entries)
    unpack(blob, box["dest"], diff_id, CAP)
    gone = os.stat(box["dest"] / "data/gone", follow_symlinks=False)
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == os.makedev(0, 0)
    assert os.getxattr(box["dest"] / "data/dir", OPAQUE_XATTR) == b"y"
    assert os.getxattr(box["dest"], OPAQUE_XATTR) == b"y"
    assert not (box["dest"] / "data/.wh.gone").exists()
    assert not (box["dest"] / "data/dir/.wh..wh..opq").exists()


ESCAPES = {
    "dotdot": [Entry("../victim/owned", data=b"x")],
    "dotdot_inside": [Entry("a", "dir"), Entry("a/../../victim/owned", data=b"x")],
    "absolute": [Entry("/tmp/calyx-escape-absolute", data=b"x")],
    "symlink_dir_then_file": [
        Entry("link", "symlink", target="../victim"),
        Entry("link/owned", data=b"x"),
    ],
    "absolute_symlink_then_file": [
        Entry("link", "symlink", target="/"),
        Entry("link/tmp/calyx-escape-abs-link", data=b"x"),
    ],
    "symlink_then_dir": [Entry("link", "symlink", target="../victim"), Entry("link/sub", "dir")],
    "hardlink_outside": [Entry("h", "link", target="../victim/secret")],
    "hardlink_absolute": [Entry("h", "link", target="/etc/passwd")],
    "hardlink_through_symlink": [
        Entry("link", "symlink", target="/etc"),
        Entry("h", "link", target="link/passwd"),
    ],
    "whiteout_dotdot": [Entry("a", "dir"), Entry("a/.wh...", data=b"")],
    "whiteout_through_symlink": [
        Entry("link", "symlink", target="../victim"),
        Entry("link/.wh.secret", data=b""),
    ],
    "opaque_through_symlink": [
        Entry("link", "symlink", target="../victim"),
        Entry("link/.wh..wh..opq", data=b""),
    ],
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escape_attempts_are_refused_and_write_nothing_outside(box, case: str) -> None:
    (box["victim"] / "secret").write_text("keep")
    blob, diff_id = write_layer(box["tmp"], ESCAPES[case])
    before = everything_outside(box)
    with pytest.raises(UnsafeLayer):
        unpack(blob, box["dest"], diff_id, CAP)
    assert everything_outside(box) == before
    assert (box["victim"] / "secret").read_text() == "keep"
    assert os.stat(box["victim"] / "secret").st_nlink == 1
    assert not Path("/tmp/calyx-escape-absolute").exists()
    assert not Path("/tmp/calyx-escape-abs-link").exists()
    with pytest.raises(OSError):
        os.getxattr(box["victim"], OPAQUE_XATTR)


def test_wrong_diff_id_is_refused(box) -> None:
    blob, _ = write_layer(box["tmp"], [Entry("f", data=b"x")])
    with pytest.raises(UnsafeLayer, match="diff id"):
        unpack(blob, box["dest"], "sha256:" + "0" * 64, CAP)


def test_garbage_is_not_a_layer(box) -> None:
    blob = box["tmp"] / "garbage"
    blob.write_bytes(b"\x1f\x8b" + os.urandom(1000))
    with pytest.raises(UnsafeLayer, match="not a readable tar"):
        unpack(blob, box["dest"], "sha256:" + "0" * 64, CAP)


def test_later_member_replaces_earlier_one(box) -> None:
    raw = tar_bytes([Entry("f", data=b"one"), Entry("f", "dir"), Entry("f", data=b"two")])
    blob = box["tmp"] / "plain"
    blob.write_bytes(raw)
    import hashlib

    unpack(blob, box["dest"], "sha256:" + hashlib.sha256(raw).hexdigest(), CAP)
    assert (box["dest"] / "f").read_bytes() == b"two"


def _gzip_layer(tmp: Path, blob_bytes: bytes) -> Path:
    blob = tmp / "gz"
    blob.write_bytes(blob_bytes)
    return blob


def _big_tar() -> tuple[bytes, str]:
    """A tar spanning several decompressed blocks (over 1 MiB), so member ends fall mid-block."""
    import hashlib

    raw = tar_bytes(
        [Entry("big", data=os.urandom(3 * 1024 * 1024 + 17)), Entry("small", data=b"tail")]
        + [Entry(f"f{i}", data=bytes([i]) * i) for i in range(50)]
    )
    return raw, "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("padding", [b"", b"\0" * 3, b"\0" * (2 * 1024 * 1024)])
def test_gzip_layer_of_several_members_and_zero_padding(box, padding: bytes) -> None:
    """Concatenated gzip members are one stream (as gzip reads them); zeros after them are padding."""
    import gzip

    raw, diff_id = _big_tar()
    cut = 1024 * 1024 + 5
    data = gzip.compress(raw[:cut], mtime=0) + gzip.compress(raw[cut:], mtime=0) + padding
    unpack(_gzip_layer(box["tmp"], data), box["dest"], diff_id, CAP)
    assert (box["dest"] / "big").read_bytes() == raw[512 : 512 + 3 * 1024 * 1024 + 17]
    assert (box["dest"] / "small").read_bytes() == b"tail"
    assert (box["dest"] / "f49").read_bytes() == bytes([49]) * 49


@pytest.mark.parametrize("damage", ["truncated", "crc", "trailing garbage"])
def test_damaged_gzip_layer_is_refused(box, damage: str) -> None:
    import gzip

    raw, diff_id = _big_tar()
    data = bytearray(gzip.compress(raw, mtime=0))
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "crc":
        data[-8] ^= 0xFF  # the trailer's CRC32
    else:
        data += b"\0\0garbage"
    with pytest.raises(UnsafeLayer, match="not a readable tar"):
        unpack(_gzip_layer(box["tmp"], bytes(data)), box["dest"], diff_id, CAP)


def test_a_passed_deadline_stops_an_unpack_and_the_store_keeps_nothing(tmp_path: Path) -> None:
    """The deadline is checked inside a layer (before each member, and as the stream is read), and the
    store keeps nothing of a layer it stopped; tests/e2e/test_hostile_images.py has it pass mid-layer."""
    entries = [Entry(f"f{i}", data=b"x") for i in range(200)] + [Entry("big", data=os.urandom(3 << 20))]
    blob, diff_id = write_layer(tmp_path, entries, "none")
    store = LayerStore(tmp_path / "layers", max_unpacked_bytes=CAP)
    [chain] = chain_ids([diff_id])
    with pytest.raises(DeadlineExceeded, match="unpacking stopped at the pull's deadline"):
        store.ensure(chain, blob, diff_id, "sha256:blob", deadline=0.0)  # long passed
    assert not store.has(chain) and store.leftovers() == []
    assert sorted(os.listdir(store.root)) == []
    # With time left the same layer unpacks whole.
    store.ensure(chain, blob, diff_id, "sha256:blob", deadline=float("inf"))
    assert store.has(chain) and (store.path(chain) / "big").stat().st_size == 3 << 20
