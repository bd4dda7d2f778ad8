"""PbCache: list items are rebuilt exactly when their object or version changes, and dead ones go."""

from __future__ import annotations

from cri.api import api_pb2 as pb
from cri.pbcache import SLACK, LastListing, PbCache


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


class _Record:
    """A record that compares by value, like the dataclasses listed."""

    def __init__(self, name: str, state: str) -> None:
        self.name, self.state = name, state

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Record) and (self.name, self.state) == (other.name, other.state)

    __hash__ = None  # type: ignore[assignment]


def test_last_listing_is_reused_until_an_object_or_its_version_changes() -> None:
    listing = LastListing()
    builds: list[list[str]] = []
    a, b = _Record("a", "RUNNING"), _Record("b", "RUNNING")

    def build(records: list[_Record]) -> list[bytes]:
        builds.append([f"{r.name}:{r.state}" for r in records])
        return [f"{r.name}:{r.state}".encode() for r in records]

    def listed(records: list[_Record]) -> list[bytes]:
        return listing.get([(r, r.state) for r in records], lambda: build(records))

    first = listed([a, b])
    assert listed([a, b]) is first and len(builds) == 1
    b.state = "EXITED"  # changed in place: the version in the key tells
    assert listed([a, b]) == [b"a:RUNNING", b"b:EXITED"]
    assert listed([a]) == [b"a:RUNNING"]  # one went away
    assert listed([a, _Record("b", "EXITED")]) == [b"a:RUNNING", b"b:EXITED"]  # one came
    assert len(builds) == 4
    # Another object with equal fields builds equal items: the last listing stands.
    assert listed([a, _Record("b", "EXITED")]) == [b"a:RUNNING", b"b:EXITED"]
    assert len(builds) == 4
