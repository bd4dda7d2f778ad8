"""Images: references, registry pulls into a verified content store, unpacked layers (ImageManager in
manager.py is the entry; containers use ``resolve(ref)`` through their own ImageResolver)."""
