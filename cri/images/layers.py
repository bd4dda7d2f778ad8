"""Unpacked layers: one directory per chain id, shared by every image (and container) that uses it.

A layer is unpacked into ``layers/tmp-<chain>-<rand>`` and renamed to ``layers/<chain>`` only when
complete, so a directory named by a chain id is always whole; leftovers of a crash are listed by
``leftovers()`` for the image manager to remove. The same chain id is never unpacked twice at once
(coalesced through Flights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path

from cri.images.flight import Flights
from cri.images.unpack import Usage, remove_layer_dir, unpack

log = logging.getLogger("cri.images.layers")


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            chains.append("sha256:" + hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest())
    return chains


class LayerStore:
    def __init__(self, root: Path, max_unpacked_bytes: int) -> None:
        self.root = root
        self.max_unpacked_bytes = max_unpacked_bytes
        root.mkdir(parents=True, exist_ok=True)
        # Layers hold setuid binaries and device nodes: no host user may reach them. Overlayfs reads
        # lower dirs with the mounter's credentials, so containers are unaffected.
        os.chmod(root, 0o700)
        self._flights: Flights[Path] = Flights()

    def path(self, chain_id: str) -> Path:
        return self.root / chain_id.split(":", 1)[1]

    def has(self, chain_id: str) -> bool:
        return self.path(chain_id).is_dir()

    def ensure(self, chain_id: str, blob: Path, diff_id: str, digest: str = "") -> Path:
        """The unpacked dir of ``chain_id``, unpacking ``blob`` (the layer ``digest``) into it unless
        that was done already."""
        final = self.path(chain_id)
        if final.is_dir():
            return final
        return self._flights.do(chain_id, lambda: self._unpack(chain_id, blob, diff_id, digest))

    def _unpack(self, chain_id: str, blob: Path, diff_id: str, digest: str) -> Path:
        final = self.path(chain_id)
        if final.is_dir():
            return final
        hexd = chain_id.split(":", 1)[1]
        tmp = self.root / f"tmp-{hexd[:16]}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(mode=0o755)
        start = time.monotonic()
        try:
            usage = unpack(blob, tmp, diff_id, self.max_unpacked_bytes, digest)
            os.rename(tmp, final)
        except BaseException:
            remove_layer_dir(tmp)
            raise
        (self.root / f"{hexd}.usage").write_text(json.dumps({"bytes": usage.bytes, "inodes": usage.inodes}))
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
            data = json.loads((self.root / f"{chain_id.split(':', 1)[1]}.usage").read_text())
            return Usage(int(data["bytes"]), int(data["inodes"]))
        except (OSError, ValueError, KeyError):
            return Usage()

    def remove(self, chain_id: str) -> None:
        hexd = chain_id.split(":", 1)[1]
        remove_layer_dir(self.path(chain_id))
        (self.root / f"{hexd}.usage").unlink(missing_ok=True)

    def chain_ids(self) -> set[str]:
        return {f"sha256:{p.name}" for p in self.root.iterdir() if len(p.name) == 64 and p.is_dir()}

    def leftovers(self) -> list[Path]:
        """Half-unpacked dirs a crash left (each name is random: no later unpack reuses it)."""
        return [entry for entry in self.root.iterdir() if entry.name.startswith("tmp-")]
