"""Prebuilt protobuf list items (ListContainers, ListPodSandbox): built once per object version.

Building a ``pb.Container`` field by field costs ~10 us in Python (metadata, image spec, two maps),
so a list of 500 containers spent ~5 ms just converting records that had not changed since the last
call. Here each item is kept with the version it was built from (the record object and whatever
mutable fields it shows, e.g. the state) and rebuilt only when that version changes. Items are kept
serialized as field 1 of a list response (``as_field1``): every List/Stream response of containers and
pods repeats its items as field 1, so a response is one parse of the joined bytes (500 containers:
0.2 ms, where copying 500 prebuilt messages into a response took 0.5 ms).

Entries of objects that are gone are dropped by ``prune`` when the cache outgrows the listing.
Reads and writes are single dict operations (atomic under the GIL): two threads racing on one entry
at worst both build it.

Kubelet relists every second, mostly finding nothing changed. ``LastListing`` keeps the last
unfiltered listing with the key it was built from (the objects and their versions, in the store's
order), so an unchanged node costs one list comparison instead of a sort and a lookup per item.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable
from typing import Any, Generic, TypeVar

M = TypeVar("M")

# How many entries beyond the live objects the cache may hold before a prune pass drops the dead.
SLACK = 64


def as_field1(message: Any) -> bytes:
    """``message`` encoded as field 1 (length-delimited) of an enclosing message."""
    body = message.SerializeToString()
    size = len(body)
    head = bytearray(b"\x0a")
    while size >= 0x80:
        head.append((size & 0x7F) | 0x80)
        size >>= 7
    head.append(size)
    return bytes(head) + body


class PbCache(Generic[M]):
    def __init__(self) -> None:
        self._items: dict[str, tuple[object, Hashable, M]] = {}

    def get(self, key: str, owner: object, version: Hashable, build: Callable[[], M]) -> M:
        """The item of ``key``, rebuilt when ``owner`` is another object or ``version`` changed.

        The caller must not modify the returned message (copy it first): it is shared by later calls.
        """
        hit = self._items.get(key)
        if hit is not None and hit[0] is owner and hit[1] == version:
            return hit[2]
        item = build()
        self._items[key] = (owner, version, item)
        return item

    def prune(self, count: int, live: Callable[[], Collection[str]]) -> None:
        """When the cache holds well over ``count`` entries (how many objects exist), forget those whose
        key is not in ``live()`` (called only then)."""
        if len(self._items) <= count + SLACK:
            return
        keep = live()
        for key in [k for k in self._items if k not in keep]:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class LastListing:
    """The last unfiltered listing and the key it was built from; rebuilt when the key changes.

    A key is a list of (object, version) pairs in the store's order. List comparison tries ``is``
    first, so unchanged records cost no field-by-field comparison; a record replaced by one with
    equal fields compares equal, and rightly: its items would be built the same.
    """

    def __init__(self) -> None:
        self._last: tuple[list[Any], list[bytes]] | None = None

    def get(self, key: list[Any], build: Callable[[], list[bytes]]) -> list[bytes]:
        last = self._last  # one read: another thread may replace it meanwhile
        if last is not None and last[0] == key:
            return last[1]
        items = build()
        self._last = (key, items)
        return items
