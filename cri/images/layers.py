"""Unpacked layers: one directory per chain id, shared by every image (and container) that uses it.

A layer is unpacked into ``layers/tmp-<chain>-<rand>`` and renamed to ``layers/<chain>`` only when
complete, so a directory named by a chain id is always whole; leftovers of a crash are listed by
``leftovers()`` for the image manager to remove. The same chain id is never unpacked twice at once
(coalesced through Flights).

A directory found on disk is reused only under a chain id, which ``validate.chain_ids`` makes from
verified sha256 diff ids alone (as containerd does): no other string names a layer directory, and every
path is checked to lie directly under the store root.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

from calyx_base.errors import InvalidArgument
from cri.images import validate
from cri.images.content import inside, real_dir
from cri.images.flight import Flights
from cri.images.unpack import Usage, remove_layer_dir, unpack

log = logging.getLogger("cri.images.layers")

chain_ids = validate.chain_ids


def _hex(chain_id: str) -> str:
    if not validate.is_sha256(chain_id):
        raise InvalidArgument(f"refusing layer chain id {validate.shown(chain_id)}: not a sha256 digest")
    return chain_id[len("sha256:") :]


class LayerStore:
    def __init__(self, root: Path, max_unpacked_bytes: int) -> None:
        self.root = real_dir(root)
        self.max_unpacked_bytes = max_unpacked_bytes
        # Layers hold setuid binaries and device nodes: no host user may reach them. Overlayfs reads
        # lower dirs with the mounter's credentials, so containers are unaffected.
        os.chmod(self.root, 0o700)
        self._flights: Flights[Path] = Flights()

    def path(self, chain_id: str) -> Path:
        return inside(self.root, _hex(chain_id))

    def has(self, chain_id: str) -> bool:
        return self.path(chain_id).is_dir()

    def ensure(
        self, chain_id: str, blob: Path, diff_id: str, digest: str = "", deadline: float | None = None
    ) -> Path:
        """The unpacked dir of ``chain_id``, unpacking ``blob`` (the layer ``digest``) into it unless
        that was done already; DeadlineExceeded (and nothing of the layer left) once ``deadline`` passes.
        A pull waiting for another's unpack of the layer waits until its own deadline."""
        final = self.path(chain_id)
        if final.is_dir():
            return final
        return self._flights.do(
            chain_id,
            lambda: self._unpack(chain_id, blob, diff_id, digest, deadline),
            deadline,
            what=f"layer {chain_id}",
        )

    def _unpack(self, chain_id: str, blob: Path, diff_id: str, digest: str, deadline: float | None) -> Path:
        final = self.path(chain_id)
        if final.is_dir():
            return final
        hexd = _hex(chain_id)
        tmp = inside(self.root, f"tmp-{hexd[:16]}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(mode=0o755)
        start = time.monotonic()
        try:
            usage = unpack(blob, tmp, diff_id, self.max_unpacked_bytes, digest, deadline)
            os.rename(tmp, final)
        except BaseException:
            remove_layer_dir(tmp)
            raise
        inside(self.root, f"{hexd}.usage").write_text(
            json.dumps({"bytes": usage.bytes, "inodes": usage.inodes})
        )
        log.info(
            "layer unpacked",
            extra={
                "chain_id": chain_id,
                "bytes": usage.bytes,
                "inodes": usage.inodes,
                "duration_ms": (time.monotonic() - start) * 1000,
            },
        )
        return final

    def usage(self, chain_id: str) -> Usage:
        try:
            data = json.loads(inside(self.root, f"{_hex(chain_id)}.usage").read_text())
            return Usage(int(data["bytes"]), int(data["inodes"]))
        except (OSError, ValueError, KeyError):
            return Usage()

    def remove(self, chain_id: str) -> None:
        remove_layer_dir(self.path(chain_id))
        inside(self.root, f"{_hex(chain_id)}.usage").unlink(missing_ok=True)

    def chain_ids(self) -> set[str]:
        """Chain ids of the unpacked layers: directories (not symlinks) named by a sha256 hex."""
        return {
            f"sha256:{p.name}"
            for p in self.root.iterdir()
            if validate.is_sha256(f"sha256:{p.name}") and p.is_dir() and not p.is_symlink()
        }

    def leftovers(self) -> list[Path]:
        """Half-unpacked dirs a crash left (each name is random: no later unpack reuses it)."""
        return [entry for entry in self.root.iterdir() if entry.name.startswith("tmp-")]
