"""The container records: the store's copy and an in-memory index, names, locks and the images in use.

A container is recorded in the store (and in ``state.json`` beside it) before anything of it is made,
and indexed (listed, found) once it is created. Each container has its own lock so that one container's
operations happen in order while different containers proceed in parallel. Nothing here asks runc or
the kernel: ExitTracker (exits.py) keeps the states fresh.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from calyx_base.errors import AlreadyExists, NotFound
from cri.containers.model import CREATED, KIND, RUNNING, Container
from cri.store import Store

NameKey = tuple[str, str, int]  # pod id, name, attempt


class ContainerRecords:
    def __init__(self, store: Store, containers_dir: Path) -> None:
        self.store = store
        self.containers_dir = containers_dir
        self._containers: dict[str, Container] = {}
        self._names: dict[NameKey, str] = {}
        self._lock = threading.RLock()
        self._locks: dict[str, threading.RLock] = {}
        # The images a CreateContainer in progress uses (its own and its image volumes'), by container
        # id: the container is indexed only at the end of its create, and RemoveImage must not take
        # them meanwhile.
        self._held_images: dict[str, frozenset[str]] = {}

    # --- the store ------------------------------------------------------------------------------------

    def persist(self, c: Container) -> None:
        self.store.put(KIND, c.id, c.to_record())
        c.write_beside()

    def delete(self, container_id: str) -> None:
        self.store.delete(KIND, container_id)

    def stored(self) -> dict[str, dict[str, Any]]:
        """Every stored container record by id (recovery reads them)."""
        return self.store.list(KIND)

    def stored_ids(self) -> set[str]:
        return set(self.store.list(KIND))

    def is_stored(self, container_id: str) -> bool:
        return self.store.get(KIND, container_id) is not None

    def dir_of(self, container_id: str) -> Path:
        return self.containers_dir / container_id

    # --- the index ------------------------------------------------------------------------------------

    def index(self, c: Container) -> None:
        with self._lock:
            self._containers[c.id] = c
            self._names[(c.pod_id, c.name, c.attempt)] = c.id

    def unindex(self, c: Container) -> None:
        with self._lock:
            self._containers.pop(c.id, None)
            if self._names.get((c.pod_id, c.name, c.attempt)) == c.id:
                del self._names[(c.pod_id, c.name, c.attempt)]
            self._locks.pop(c.id, None)

    def find(self, container_id: str) -> Container:
        """A container by id or unique id prefix, as recorded (ExitTracker.get refreshes it); NotFound."""
        if not container_id:
            raise NotFound("container id is empty")
        with self._lock:
            found = self._containers.get(container_id)
            if found is None:
                matches = [c for cid, c in self._containers.items() if cid.startswith(container_id)]
                if len(matches) != 1:
                    raise NotFound(f"container {container_id} not found", container_id)
                found = matches[0]
        return found

    def has_prefix(self, text: str) -> bool:
        """Whether some container's id starts with ``text``."""
        with self._lock:
            return any(cid.startswith(text) for cid in self._containers)

    def all(self) -> builtins.list[Container]:
        with self._lock:
            return list(self._containers.values())

    def of_pod(self, pod_id: str) -> builtins.list[Container]:
        with self._lock:
            return [c for c in self._containers.values() if c.pod_id == pod_id]

    def live(self, ids: Collection[str] | None = None) -> builtins.list[Container]:
        """The containers that may still run (CREATED, RUNNING), of those in ``ids`` if given."""
        with self._lock:
            if ids is None:
                return [c for c in self._containers.values() if c.state in (CREATED, RUNNING)]
            return [c for i in ids if (c := self._containers.get(i)) and c.state in (CREATED, RUNNING)]

    def cgroup_parents(self) -> set[str]:
        with self._lock:
            return {c.cgroup_parent for c in self._containers.values()}

    # --- names, locks, images in use ------------------------------------------------------------------

    @contextlib.contextmanager
    def reserve_name(self, pod_id: str, name: str, attempt: int, container_id: str) -> Iterator[None]:
        """kubelet's (pod, name, attempt) names one container: held for the create, kept if it succeeds."""
        key = (pod_id, name, attempt)
        with self._lock:
            holder = self._names.get(key)
            if holder is not None:
                raise AlreadyExists(
                    f"container {name!r} attempt {attempt} already exists in pod {pod_id} as {holder}", holder
                )
            self._names[key] = container_id
        try:
            yield
        except BaseException:
            with self._lock:
                if self._names.get(key) == container_id and container_id not in self._containers:
                    del self._names[key]
            raise

    @contextlib.contextmanager
    def hold_images(self, container_id: str, image_ids: Collection[str]) -> Iterator[None]:
        """The images of a create in progress count as in use until it ends: then the indexed container
        (if the create succeeded) holds them."""
        with self._lock:
            self._held_images[container_id] = frozenset(image_ids)
        try:
            yield
        finally:
            with self._lock:
                self._held_images.pop(container_id, None)

    def uses_image(self, image_id: str) -> bool:
        """Whether a container runs ``image_id`` or mounts it as an image volume, or a create in progress
        is about to (RemoveImage asks)."""
        with self._lock:
            if any(image_id in held for held in self._held_images.values()):
                return True
            return any(
                c.image_id == image_id or any(v.get("image_id") == image_id for v in c.image_volumes)
                for c in self._containers.values()
            )

    def lock_of(self, container_id: str) -> threading.RLock:
        with self._lock:
            return self._locks.setdefault(container_id, threading.RLock())

    def drop_lock(self, container_id: str) -> None:
        with self._lock:
            self._locks.pop(container_id, None)
