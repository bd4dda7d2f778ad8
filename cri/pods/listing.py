"""ListPodSandbox and StreamPodSandboxes: the pods a filter selects, as encoded list items.

One prebuilt pb.PodSandbox per pod record: a Pod is frozen and every change replaces it, so the record
object itself is the version (see cri/pbcache.py). No filter and an empty one (crictl sends one) are
the same listing, kept whole while no pod changes.
"""

from __future__ import annotations

from calyx_base.errors import NotFound
from cri.api import api_pb2 as pb
from cri.pbcache import LastListing, PbCache, as_field1
from cri.pods.index import PodIndex
from cri.pods.model import NOTREADY, READY, Pod
from cri.pods.status import sandbox_state

STATE_NAMES = {pb.SANDBOX_READY: READY, pb.SANDBOX_NOTREADY: NOTREADY}


def pod_sandbox(pod: Pod) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=pod.id,
        metadata=pod.metadata.to_pb(),
        state=sandbox_state(pod),
        created_at=pod.created_at,
        labels=pod.labels,
        annotations=pod.annotations,
        runtime_handler=pod.runtime_handler,
    )


class PodListing:
    def __init__(self, index: PodIndex) -> None:
        self.index = index
        self._items: PbCache[bytes] = PbCache()
        self._unfiltered = LastListing()

    def encoded(self, flt: pb.PodSandboxFilter | None) -> list[bytes]:
        """Each selected pod as field 1 of a list response (cri/pbcache.py), oldest first."""
        every = self.index.list()
        if flt is None or not flt.ByteSize():
            # A Pod is frozen: a change is a new object, so the objects are the key.
            return self._unfiltered.get(
                every, lambda: self._encode(sorted(every, key=lambda p: p.created_at), every)
            )
        return self._encode(self.filtered(flt), every)

    def filtered(self, flt: pb.PodSandboxFilter) -> list[Pod]:
        """Pods matching ``flt``: id (full or unique prefix), state, and every label of the selector."""
        if flt.id:
            try:
                pods = [self.index.get(flt.id)]
            except NotFound:  # an unknown id selects nothing
                return []
        else:
            pods = self.index.list()
        if flt.HasField("state"):
            wanted = STATE_NAMES.get(flt.state.state)
            pods = [p for p in pods if p.state == wanted]
        if flt.label_selector:
            selector = dict(flt.label_selector)
            pods = [p for p in pods if all(p.labels.get(k) == v for k, v in selector.items())]
        return sorted(pods, key=lambda p: p.created_at)

    def _encode(self, chosen: list[Pod], every: list[Pod]) -> list[bytes]:
        """The items of ``chosen`` (in order); entries of pods no longer in ``every`` are dropped."""
        self._items.prune(len(every), lambda: {p.id for p in every})
        return [self._item(p) for p in chosen]

    def _item(self, pod: Pod) -> bytes:
        return self._items.get(pod.id, pod, None, lambda: as_field1(pod_sandbox(pod)))
