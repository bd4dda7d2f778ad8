"""Mounts Calyx stages under a container dir for runc to bind (idmapped volumes, image volumes) or for
overlayfs to take as layers (attached idmapped layers, rootfs.attached_layers).

They are needed only while runc creates the container, which then holds its own copies, so they are
released right after; a create cut short or a crash leaves them to the undo path and to recovery. A
container dir is removed only once they are gone: ``rm -r`` through a staged volume would delete the
volume's files.
"""

from __future__ import annotations

from pathlib import Path

from cri.containers import idmapped, image_volumes, rootfs
from sandbox import trees


def release(container_dir: Path) -> None:
    """Release every staging mount of the container (raises when one cannot be)."""
    idmapped.release(container_dir)
    image_volumes.release(container_dir)
    rootfs.release_attached(container_dir / rootfs.LAYERS_DIR)


def remove_dir(container_dir: Path) -> None:
    """Remove a container dir once its staging mounts are released (it stays if one cannot be). The
    writable layer in it may be any tree a container could make (sandbox/trees.py); RemoveFailed says what
    could not go."""
    release(container_dir)
    trees.remove_tree(container_dir)
