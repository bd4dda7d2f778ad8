"""The pod index: every pod sandbox Calyx knows, by id and by kubelet's name, with one lock per pod.

It lives in memory for fast List and lookups, and is rebuilt from the store by recovery. Each pod has
its own lock so that run, stop and remove of one pod (and the changes of its containers) happen in
order while different pods proceed in parallel. The containers subsystem reads pods through it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from calyx_base.errors import AlreadyExists, NotFound
from cri.pods.model import KIND, Pod
from cri.store import Store

NameKey = tuple[str, str, str, int]  # name, namespace, uid, attempt


class PodIndex:
    def __init__(self, store: Store, pods_dir: Path) -> None:
        self.store = store
        self.pods_dir = pods_dir
        self._index: dict[str, Pod] = {}
        self._names: dict[NameKey, str] = {}
        self._lock = threading.RLock()
        self._pod_locks: dict[str, threading.RLock] = {}

    def pod_dir(self, pod_id: str) -> Path:
        return self.pods_dir / pod_id

    # --- lookups ------------------------------------------------------------------------------------

    def resolve_id(self, pod_id: str) -> str:
        """The full id of the pod ``pod_id`` names (a unique prefix is enough); NotFound otherwise."""
        with self._lock:
            if pod_id in self._index:
                return pod_id
            matches = [i for i in self._index if pod_id and i.startswith(pod_id)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise NotFound(f"pod sandbox id prefix {pod_id!r} is ambiguous", pod_id)
        raise NotFound(f"pod sandbox {pod_id!r} not found", pod_id)

    def get(self, pod_id: str) -> Pod:
        """The pod named by ``pod_id`` (full id or unique prefix); NotFound."""
        full = self.resolve_id(pod_id)
        with self._lock:
            pod = self._index.get(full)
        if pod is None:
            raise NotFound(f"pod sandbox {pod_id!r} not found", pod_id)
        return pod

    def list(self) -> list[Pod]:
        with self._lock:
            return list(self._index.values())

    @contextlib.contextmanager
    def locked(self, pod_id: str) -> Iterator[None]:
        """Hold the pod's lock: its run, stop and remove (and container changes) go one at a time."""
        with self._lock:
            lock = self._pod_locks.setdefault(pod_id, threading.RLock())
        with lock:
            yield

    # --- changes ------------------------------------------------------------------------------------

    def reserve_name(self, key: NameKey, pod_id: str) -> None:
        with self._lock:
            owner = self._names.get(key)
            if owner is not None:
                name, namespace, uid, attempt = key
                raise AlreadyExists(
                    f"pod sandbox {namespace}/{name} (uid {uid}, attempt {attempt}) already exists "
                    f"as {owner}",
                    owner,
                )
            self._names[key] = pod_id

    def release_name(self, key: NameKey, pod_id: str) -> None:
        with self._lock:
            if self._names.get(key) == pod_id:
                del self._names[key]

    def record(self, pod: Pod) -> None:
        """Persist ``pod`` without listing it: an intent (a run begun, a stop begun) that recovery reads."""
        self.store.put(KIND, pod.id, pod.to_record())

    def save(self, pod: Pod) -> None:
        """Persist ``pod`` and publish it in the index (complete pods only are listed)."""
        self.store.put(KIND, pod.id, pod.to_record())
        with self._lock:
            if pod.complete:
                self._index[pod.id] = pod
                self._names[pod.metadata.key] = pod.id

    def erase(self, pod_id: str) -> None:
        """Delete the stored record of a pod that was never listed (a run undone)."""
        self.store.delete(KIND, pod_id)

    def forget(self, pod: Pod) -> None:
        self.store.delete(KIND, pod.id)
        with self._lock:
            self._index.pop(pod.id, None)
            self.release_name(pod.metadata.key, pod.id)
            self._pod_locks.pop(pod.id, None)

    def stored(self) -> dict[str, dict[str, Any]]:
        """Every stored pod record by id, as recovery reads them."""
        return self.store.list(KIND)
