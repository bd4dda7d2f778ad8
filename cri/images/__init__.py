"""Images: references, registry pulls into a verified content store, unpacked layers (issue 3).

``runtime.images`` is an ImageManager; other subsystems use ``resolve(ref) -> Image``.
"""

from __future__ import annotations

from cri.images.manager import ImageManager
from cri.images.model import Image
from cri.runtime import Runtime

__all__ = ["Image", "ImageManager", "build"]


def build(runtime: Runtime) -> None:
    """Subsystem builder: ``runtime.images``."""
    runtime.register("images", ImageManager(runtime))
