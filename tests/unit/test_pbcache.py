"""PbCache: list items are rebuilt exactly when their object or version changes, and dead ones go."""

from __future__ import annotations

from cri.api import api_pb2 as pb
from cri.pbcache import SLACK, PbCache


def test_item_is_reused_until_its_version_or_owner_changes() -> None:
    cache: PbCache[pb.Container] = PbCache()
    builds: list[int] = []
    owner = object()

    def build(state: int) -> pb.Container:
        builds.append(state)
        return pb.Container(id="a", state=state)  # type: ignore[arg-type]

    first = cache.get("a", owner, 1, lambda: build(1))
    assert cache.get("a", owner, 1, lambda: build(1)) is first
    running = cache.get("a", owner, 2, lambda: build(2))
    assert running.state == 2 and builds == [1, 2]
    # A new record object of the same id (e.g. a pod replaced on change) is built again.
    assert cache.get("a", object(), 2, lambda: build(2)) is not running
    assert builds == [1, 2, 2]


def test_prune_drops_gone_keys_only_once_the_cache_outgrows_the_listing() -> None:
    cache: PbCache[pb.PodSandbox] = PbCache()
    owner = object()
    for i in range(SLACK + 10):
        cache.get(str(i), owner, None, lambda i=i: pb.PodSandbox(id=str(i)))
    asked: list[bool] = []

    def live() -> set[str]:
        asked.append(True)
        return {"0", "1"}

    cache.prune(SLACK + 10, live)
    assert not asked and len(cache) == SLACK + 10
    cache.prune(2, live)
    assert asked and len(cache) == 2


def test_items_as_field1_join_into_any_list_response() -> None:
    """Joined field-1 encodings parse as the list (varint lengths of 1, 2 and 3 bytes included)."""
    from cri.pbcache import as_field1

    items = [pb.Container(id="x" * n, labels={"k": "v" * n}) for n in (0, 1, 60, 200, 20000)]
    joined = b"".join(as_field1(c) for c in items)
    assert list(pb.ListContainersResponse.FromString(joined).containers) == items
    assert list(pb.StreamContainersResponse.FromString(joined).containers) == items
    pods = [pb.PodSandbox(id=str(i), annotations={"a": "b" * i * 100}) for i in range(4)]
    joined = b"".join(as_field1(p) for p in pods)
    assert list(pb.ListPodSandboxResponse.FromString(joined).items) == pods
    assert list(pb.StreamPodSandboxesResponse.FromString(joined).pod_sandboxes) == pods
