"""``runtime.pods``: the pod index and the entry points of the pod lifecycle.

The index (id -> Pod, and kubelet's (name, namespace, uid, attempt) -> id) lives in memory for fast List
and lookups and is rebuilt from the store by ``recover()``. Each pod has its own lock so that run, stop
and remove of one pod happen in order while different pods proceed in parallel.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from calyx_base.errors import AlreadyExists, NotFound
from cri.api import api_pb2 as pb
from cri.pods.model import KIND, Pod
from cri.pods.watch import HolderWatch
from cri.runtime import Runtime
from sandbox.network import PodNetworks

log = logging.getLogger("cri.pods")


class PodService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.store = runtime.store
        net = runtime.config.network
        self.networks = PodNetworks(
            Path(net.cni_conf_dir),
            net.cni_bin_dirs,
            net.cni_plugin_timeout_seconds,
            net.bridge,
            net.subnet,
            net.subnet_v6,
            leases=runtime.store,
            pod_cidr=lambda: runtime.pod_cidr,
        )
        self._index: dict[str, Pod] = {}
        self._names: dict[tuple[str, str, str, int], str] = {}
        self._index_lock = threading.RLock()
        self._pod_locks: dict[str, threading.RLock] = {}
        self.watch = HolderWatch(self._holder_exited)

    # --- paths --------------------------------------------------------------------------------------

    @property
    def run_root(self) -> Path:
        return self.config.run_root

    def pod_dir(self, pod_id: str) -> Path:
        return self.config.root / "pods" / pod_id

    # --- index --------------------------------------------------------------------------------------

    def resolve_id(self, pod_id: str) -> str:
        """The full id of the pod ``pod_id`` names (a unique prefix is enough); NotFound otherwise."""
        with self._index_lock:
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
        with self._index_lock:
            pod = self._index.get(full)
        if pod is None:
            raise NotFound(f"pod sandbox {pod_id!r} not found", pod_id)
        return pod

    def list(self) -> list[Pod]:
        with self._index_lock:
            return list(self._index.values())

    def reserve_name(self, key: tuple[str, str, str, int], pod_id: str) -> None:
        with self._index_lock:
            owner = self._names.get(key)
            if owner is not None:
                name, namespace, uid, attempt = key
                raise AlreadyExists(
                    f"pod sandbox {namespace}/{name} (uid {uid}, attempt {attempt}) already exists "
                    f"as {owner}",
                    owner,
                )
            self._names[key] = pod_id

    def release_name(self, key: tuple[str, str, str, int], pod_id: str) -> None:
        with self._index_lock:
            if self._names.get(key) == pod_id:
                del self._names[key]

    def save(self, pod: Pod) -> None:
        """Persist ``pod`` and publish it in the index (complete pods only are listed)."""
        self.store.put(KIND, pod.id, pod.to_record())
        with self._index_lock:
            if pod.complete:
                self._index[pod.id] = pod
                self._names[pod.metadata.key] = pod.id

    def forget(self, pod: Pod) -> None:
        self.store.delete(KIND, pod.id)
        with self._index_lock:
            self._index.pop(pod.id, None)
            self.release_name(pod.metadata.key, pod.id)
            self._pod_locks.pop(pod.id, None)

    @contextlib.contextmanager
    def locked(self, pod_id: str) -> Iterator[None]:
        """Hold the pod's lock: its run, stop and remove (and container changes) go one at a time."""
        with self._index_lock:
            lock = self._pod_locks.setdefault(pod_id, threading.RLock())
        with lock:
            yield

    # --- lifecycle (logic in run.py, stop.py, remove.py, recover.py) --------------------------------

    def run(self, request: pb.RunPodSandboxRequest) -> Pod:
        from cri.pods.run import run_pod

        return run_pod(self, request)

    def stop(self, pod_id: str) -> None:
        from cri.pods.stop import stop_pod

        stop_pod(self, pod_id)

    def remove(self, pod_id: str) -> None:
        from cri.pods.remove import remove_pod

        remove_pod(self, pod_id)

    def update_resources(self, request: pb.UpdatePodSandboxResourcesRequest) -> None:
        from cri.pods.resources import update_pod_resources

        update_pod_resources(self, request)

    def recover(self) -> None:
        from cri.pods.recover import recover_pods

        recover_pods(self)

    def close(self) -> None:
        self.watch.close()

    def _holder_exited(self, pod_id: str) -> None:
        """A pod's PID holder died: the pod is dead, stop it so that kubelet sees NOTREADY and recreates it.

        Our own stop kills holders too; it holds the pod lock while doing so and leaves the pod NOTREADY,
        so checking the state under the lock tells the two apart.
        """
        from cri.pods.stop import stop_pod

        with self.locked(pod_id):
            try:
                pod = self.get(pod_id)
            except NotFound:
                return
            if not pod.ready:
                return
            log.warning("the pod's PID namespace holder exited; stopping the pod", extra={"pod_id": pod_id})
            stop_pod(self, pod_id)

    # --- what other subsystems use ------------------------------------------------------------------

    @property
    def containers(self) -> Any:
        return getattr(self.runtime, "containers", None)

    @property
    def cgroups(self) -> Any:
        return getattr(self.runtime, "cgroups", None)
