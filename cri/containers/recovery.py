"""Recovery at start: rebuild the container index from the store and reconcile it with the machine.

Half-made and half-removed containers (CREATING, REMOVING) are finished off; a container dir no record
owns (a store that lost its last commits) is removed with what its ``state.json`` says it holds;
staging mounts a crash left are released; exits that happened while the daemon was down are picked up
and a start that ran without being recorded is adopted; container cgroups and pod /dev/shm that belong
to nobody any more go. A cleanup that fails is logged, counted and retried (Cleanups); the rest goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from functools import partial
from pathlib import Path

from calyx_base.cleanups import Cleanups
from calyx_base.errors import Internal, NotFound
from cri.containers import orphans, staging
from cri.containers.deps import PodLookup
from cri.containers.exits import ExitTracker
from cri.containers.lifecycle import ContainerLifecycle
from cri.containers.model import CREATED, CREATING, REMOVING, Container
from cri.containers.monitors import Monitors
from cri.containers.records import ContainerRecords
from sandbox import mounts, shm
from sandbox.cgroups import CgroupDriver

log = logging.getLogger("cri.containers")


class ContainerRecovery:
    def __init__(
        self,
        records: ContainerRecords,
        monitors: Monitors,
        exits: ExitTracker,
        lifecycle: ContainerLifecycle,
        pods: PodLookup,
        cgroups: CgroupDriver,
        cleanups: Cleanups,
        run_root: Path,
    ) -> None:
        self.records = records
        self.monitors = monitors
        self.exits = exits
        self.lifecycle = lifecycle
        self.pods = pods
        self.cgroups = cgroups
        self.cleanups = cleanups
        self.run_root = run_root

    def recover(self) -> None:
        """Rebuild the index from the store; clean half-made containers; pick up exits made while down;
        then watch for exits."""
        containers_dir = self.records.containers_dir
        containers_dir.mkdir(parents=True, exist_ok=True)
        cleanups = self.cleanups
        records: dict[str, Container] = {}
        for cid, record in self.records.stored().items():
            try:
                records[cid] = Container.from_record(record)
            except (KeyError, TypeError, ValueError) as exc:  # its dir is swept below, from state.json
                log.error(
                    "unreadable container record dropped", extra={"container_id": cid, "error": repr(exc)}
                )
                self.records.delete(cid)
        for path in containers_dir.iterdir():
            if path.name not in records and path.is_dir():
                log.warning("removing a container the store does not know", extra={"container_id": path.name})
                cleanups.attempt("container", path.name, partial(self._remove_unrecorded, path), "unrecorded")
        for cid, c in records.items():
            if c.state in (CREATING, REMOVING):
                log.info("removing half-created or half-removed container", extra={"container_id": cid})
                cleanups.attempt("container", cid, partial(self._finish_removal, c), "remove")
                continue
            self.records.index(c)
            cleanups.attempt("container", cid, partial(self._release_staging, c), "staging")
            try:
                self.exits.refresh(c)
                if c.state == CREATED:
                    self._adopt_started(c)
            except Exception as exc:  # listed as recorded; the exit watcher looks again
                cleanups.report("container", cid, exc)
            log.info("container recovered", extra={"container_id": cid, "state": c.state})
        cleanups.attempt("cgroup", "orphans", self._sweep_orphan_cgroups)
        for pod_id in self._shm_orphans():
            cleanups.attempt("pod", pod_id, partial(shm.release, self.run_root, pod_id), "shm")
        self.exits.start()

    def _release_staging(self, c: Container) -> None:
        """Staging mounts a crash left (runc has its own copies): released under the container's lock,
        since a RemoveContainer may run meanwhile when this is retried later."""
        with self.records.lock_of(c.id):
            staging.release(c.path)

    def _adopt_started(self, c: Container) -> None:
        """A crash between ``runc start`` and recording it leaves a CREATED record of a running container."""
        state = self.monitors.of(c).state(c.id)
        if state and state.get("status") == "running":
            c.mark_started(c.started_at or time.time_ns())
            self.records.persist(c)
            log.info("container found started", extra={"container_id": c.id})

    def _finish_removal(self, c: Container) -> None:
        """Finish a creation or removal a crash interrupted; the record goes once all of it is gone."""
        with self.records.lock_of(c.id):
            self.lifecycle.cleanup(c)
        self.records.drop_lock(c.id)

    def _remove_unrecorded(self, path: Path) -> None:
        """A container dir no record owns (a store that lost its last commits, e.g. at a power cut):
        its container is killed and deleted from runc, rootfs unmounted, cgroups and dir removed,
        using the copy of the record kept beside the container (state.json)."""
        if self.records.is_stored(path.name):
            return  # ids are random: only a retry racing nothing could see this; stay safe anyway
        try:
            c = Container.from_record(json.loads((path / "state.json").read_text()))
        except FileNotFoundError:
            if not path.exists():
                return
            c = None
        except (OSError, ValueError, TypeError, KeyError):
            c = None
        if c is None:
            mounts.unmount(path / "rootfs")
            staging.remove_dir(path)
            return
        self.lifecycle.cleanup(c)

    def _sweep_orphan_cgroups(self) -> None:
        """Container cgroups below our parents that no record owns (see orphans.py); what could not be
        removed is reported by raising, after the others went."""
        known = self.records.stored_ids()  # now, not at start: containers made since have records
        parents = {""} | self.records.cgroup_parents() | {p.cgroup_parent or "" for p in self.pods.list()}
        monitors = self.monitors.every()
        failed: dict[str, str] = {}
        removed = orphans.sweep_orphan_cgroups(
            self.cgroups, known, parents, self.monitors.exit_dir, [m.runtime_root for m in monitors], failed
        )
        for cid in removed:  # and runc's state of them, if it kept any
            for mon in monitors:
                if (mon.runtime_root / cid).exists():
                    with contextlib.suppress(Exception):
                        mon.delete(cid)
        if failed:
            raise Internal(f"cgroups of unknown containers not removed: {failed}")

    def _shm_orphans(self) -> list[str]:
        """Pods that no longer exist (removed while the daemon was down) but keep their /dev/shm."""
        found = []
        for pod_id in shm.pod_ids(self.run_root):
            try:
                self.pods.get(pod_id)
            except NotFound:
                log.info("releasing shm of a removed pod", extra={"pod_id": pod_id})
                found.append(pod_id)
        return found
