"""ListContainers and StreamContainers: the containers a filter selects, as encoded list items.

One prebuilt pb.Container per container (serialized as field 1 of a list response), rebuilt when its
state changes (all else in it is fixed at creation); see cri/pbcache.py. Containers change state in
place, so the unfiltered listing is kept with the states it was built from.
"""

from __future__ import annotations

from cri.api import api_pb2 as pb
from cri.containers import status as conv
from cri.containers.exits import ExitTracker
from cri.containers.model import CREATING, PB_STATE, Container
from cri.pbcache import LastListing, PbCache, as_field1


def _matches(c: Container, flt: pb.ContainerFilter) -> bool:
    if flt.id and not c.id.startswith(flt.id):
        return False
    if flt.pod_sandbox_id and not c.pod_id.startswith(flt.pod_sandbox_id):
        return False
    if flt.HasField("state") and PB_STATE[c.state] != flt.state.state:
        return False
    return all(c.labels.get(k) == v for k, v in flt.label_selector.items())


class ContainerListing:
    def __init__(self, exits: ExitTracker) -> None:
        self.exits = exits
        self._items: PbCache[bytes] = PbCache()
        self._unfiltered = LastListing()

    def encoded(self, flt: pb.ContainerFilter) -> list[bytes]:
        """Each selected container as field 1 of a list response (cri/pbcache.py), oldest first."""
        every = self.exits.list()
        if not flt.ByteSize():
            # Containers change state in place: the state is part of the key.
            return self._unfiltered.get([(c, c.state) for c in every], lambda: self._encode(every, every))
        return self._encode([c for c in every if _matches(c, flt)], every)

    def _encode(self, chosen: list[Container], every: list[Container]) -> list[bytes]:
        """The listed items of ``chosen`` (all of ``every``, or those a filter kept), oldest first."""
        listed = sorted((c for c in chosen if c.state != CREATING), key=lambda c: c.created_at)
        selected = [self._item(c) for c in listed]
        self._items.prune(len(every), lambda: {c.id for c in every})
        return selected

    def _item(self, c: Container) -> bytes:
        return self._items.get(c.id, c, c.state, lambda: as_field1(conv.to_container(c)))
