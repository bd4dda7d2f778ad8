"""Images: references, registry pulls into a verified content store, unpacked layers (ImageManager in
manager.py is the entry; other subsystems use ``resolve(ref) -> Image``)."""
