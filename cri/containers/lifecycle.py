"""The container lifecycle behind the CRI container RPCs: create, start, stop, remove, resources, logs.

Containers run under conmon and outlive the daemon; runc is driven through their Monitor. Every change
happens under the pod's lock (so that a container is not made or started in a pod being torn down),
then the container's own (so that one container's operations go in order); the event about it is
published before the lock is let go, so that events of one object keep their order.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from calyx_base import failpoints, poll
from calyx_base.errors import CommandFailed, DeadlineExceeded, FailedPrecondition, NotFound
from cri.api import api_pb2 as pb
from cri.containers import runc_errors, staging
from cri.containers.create import CreateDeps, create_container
from cri.containers.deps import ContainerEvents, PodLookup
from cri.containers.exits import ExitTracker
from cri.containers.model import CREATED, REMOVING, RUNNING, Container
from cri.containers.monitor import Monitor, signal_number, wait_monitor_gone
from cri.containers.monitors import Monitors
from cri.containers.procinfo import alive
from cri.containers.records import ContainerRecords
from cri.containers.resources import to_oci
from sandbox import mounts, shm
from sandbox.cgroups import CgroupDriver

log = logging.getLogger("cri.containers")

KILL_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.02
REOPEN_WAIT_SECONDS = 10.0  # conmon answers a log reopen within milliseconds


class ContainerLifecycle:
    def __init__(
        self,
        records: ContainerRecords,
        monitors: Monitors,
        exits: ExitTracker,
        pods: PodLookup,
        cgroups: CgroupDriver,
        events: ContainerEvents,
        creating: CreateDeps,
        run_root: Path,
    ) -> None:
        self.records = records
        self.monitors = monitors
        self.exits = exits
        self.pods = pods
        self.cgroups = cgroups
        self.events = events
        self.creating = creating
        self.run_root = run_root

    def _pod_locked(self, pod_id: str) -> contextlib.AbstractContextManager[None]:
        """The pod's lock, so that a container is not made or started in a pod that StopPodSandbox or
        RemovePodSandbox is tearing down: they hold it while they stop and remove the pod's containers.
        Order: pod lock, then container lock (as stop/remove take them). An unknown pod id is left to
        the caller's lookup (NotFound)."""
        try:
            full_id = self.pods.resolve_id(pod_id)
        except NotFound:
            return contextlib.nullcontext()
        return self.pods.locked(full_id)

    # --- create, start --------------------------------------------------------------------------------

    def create(self, pod_id: str, config: pb.ContainerConfig) -> str:
        with self._pod_locked(pod_id):
            c = create_container(self.creating, pod_id, config)
            with self.records.lock_of(c.id):  # before the exit watcher can report it STOPPED
                self.events.container_changed(c, pb.CONTAINER_CREATED_EVENT)
        return c.id

    def start(self, container_id: str) -> None:
        c = self.exits.get(container_id)
        with self._pod_locked(c.pod_id), self.records.lock_of(c.id):
            if c.state != CREATED:
                raise FailedPrecondition(f"container {c.id} is {c.state.lower()}, not created", c.id)
            pod = self.pods.get(c.pod_id)  # NotFound once removed
            if not pod.ready:  # it needs the pod's namespaces
                raise FailedPrecondition(f"pod {c.pod_id} is not ready", c.pod_id)
            mon = self.monitors.of(c)
            c.oom_kills_at_start = self.cgroups.parent_oom_kills(c.cgroup_parent)
            failpoints.hit("container.before_start", container_id=c.id)
            try:
                mon.start(c.id)
                failpoints.hit("container.after_start", container_id=c.id)
            except Exception as exc:
                c.mark_exited(128, time.time_ns(), "StartError", str(exc)[-1000:])
                self.records.persist(c)
                self.events.container_changed(c, pb.CONTAINER_STOPPED_EVENT)
                with contextlib.suppress(Exception):
                    mon.delete(c.id)
                why = runc_errors.not_startable(exc.stderr) if isinstance(exc, CommandFailed) else None
                if why is not None:
                    raise FailedPrecondition(f"container {c.id} {why}", c.id) from exc
                raise
            c.mark_started(time.time_ns())
            self.records.persist(c)
            log.info("container started", extra={"container_id": c.id})
            # under the lock: STOPPED cannot overtake it
            self.events.container_changed(c, pb.CONTAINER_STARTED_EVENT)
        self.exits.refresh(c)

    # --- stop, remove ---------------------------------------------------------------------------------

    def _wait_exit(self, c: Container, mon: Monitor, timeout: float) -> bool:
        def exited() -> bool:
            if mon.exit_code(c.id, c.path) is not None:
                return True
            return not alive(c.conmon_pid, c.conmon_start) and not alive(c.pid, c.pid_start)

        return poll.until(exited, timeout, POLL_SECONDS)

    def stop(self, container_id: str, timeout_s: float) -> None:
        """Stop signal, then SIGKILL after ``timeout_s``; an exited container is left as it is, and so is
        one that does not exist (CRI: stopping an unknown container succeeds; kubelet retries a stop
        whose container was removed meanwhile). An ambiguous id prefix is still NotFound."""
        try:
            c = self.exits.get(container_id)
        except NotFound:
            if container_id and not self.records.has_prefix(container_id):
                log.info("stop of an unknown container: nothing to do", extra={"container_id": container_id})
                return
            raise
        if timeout_s > 0 and self._signal_stop(c):
            # The grace period is waited out without the container's lock, so a later stop (kubelet
            # escalating with a shorter timeout), RemoveContainer or StopPodSandbox acts meanwhile
            # instead of queueing behind it, as containerd lets them.
            start = time.monotonic()
            if self._wait_exit(c, self.monitors.of(c), timeout_s):
                self.exits.refresh(c)
                log.info("container stopped", extra={"container_id": c.id, "duration_ms": _ms(start)})
                return
        with self.records.lock_of(c.id):
            self._kill_locked(c)

    def _signal_stop(self, c: Container) -> bool:
        """Send a running container its stop signal (under its lock); whether it was running."""
        with self.records.lock_of(c.id):
            self.exits.refresh(c)
            if c.state != RUNNING:
                return False
            self.monitors.of(c).kill(c.id, signal_number(c.stop_signal))
            failpoints.hit("container.stop_after_signal", container_id=c.id)
            return True

    def _kill_locked(self, c: Container) -> None:
        """SIGKILL a created or running container and wait for its end (the container's lock held)."""
        self.exits.refresh(c)
        if c.state not in (CREATED, RUNNING):
            return
        mon = self.monitors.of(c)
        start = time.monotonic()
        mon.kill(c.id, 9, all_processes=c.shared_pid_ns)
        if c.state == CREATED:
            # A created container has no conmon-reported exit; runc delete reaps its init.
            self._wait_exit(c, mon, KILL_WAIT_SECONDS)
        elif not self._wait_exit(c, mon, KILL_WAIT_SECONDS):
            raise FailedPrecondition(f"container {c.id} did not exit after SIGKILL", c.id)
        self.exits.refresh(c)
        log.info("container killed", extra={"container_id": c.id, "duration_ms": _ms(start)})

    def remove(self, container_id: str) -> None:
        """Kill if needed, then delete runc state, rootfs, dir and record. Unknown ids are fine."""
        try:
            c = self.exits.get(container_id)
        except NotFound:
            return
        with self.records.lock_of(c.id):
            if c.state in (CREATED, RUNNING):
                self._kill_locked(c)
            if c.state != REMOVING:
                c.state = REMOVING  # the intent: a crash from here on is finished by recovery
                self.records.persist(c)
            self.cleanup(c)
        self.records.unindex(c)
        log.info("container removed", extra={"container_id": c.id})
        self.events.container_changed(c, pb.CONTAINER_DELETED_EVENT)

    def cleanup(self, c: Container) -> None:
        """Everything of ``c`` goes (runc state, cgroups, rootfs, dir), the record last; idempotent, so
        recovery finishes a removal or a create a crash cut short with it (container lock held)."""
        mon = self.monitors.of(c)
        mon.delete(c.id)
        failpoints.hit("container.remove_after_runc_delete", container_id=c.id)
        with contextlib.suppress(OSError):
            self.cgroups.remove_container(c.id, c.cgroup_parent)
        mounts.unmount(c.rootfs)
        failpoints.hit("container.remove_after_unmount", container_id=c.id)
        wait_monitor_gone(c.id, c.bundle, c.conmon_pid)
        staging.remove_dir(c.path)  # staging mounts of a create cut short are released first
        failpoints.hit("container.remove_after_dir", container_id=c.id)
        mon.forget(c.id)
        self.records.delete(c.id)

    # --- resources, logs ------------------------------------------------------------------------------

    def update_resources(self, container_id: str, resources: pb.LinuxContainerResources) -> None:
        c = self.exits.get(container_id)
        with self.records.lock_of(c.id):
            if c.state not in (CREATED, RUNNING):
                raise FailedPrecondition(f"container {c.id} is not running", c.id)
            self.cgroups.update(c.id, c.cgroup_parent, to_oci(resources, self.cgroups.hierarchy))
            c.set_resources(resources)
            self.records.persist(c)

    def reopen_log(self, container_id: str) -> None:
        c = self.exits.get(container_id)
        if c.state != RUNNING:
            raise FailedPrecondition(f"container {c.id} is not running", c.id)
        Monitor.reopen_log(c.bundle)
        if not c.log_path:
            return
        # conmon reopens after it reads the request from its ctl fifo, on its own time; kubelet (and
        # critest) look for the new file as soon as this returns, so wait until conmon has made it.
        log_file = Path(c.log_path)

        def settled() -> bool:
            return log_file.exists() or not alive(c.conmon_pid, c.conmon_start)

        start = time.monotonic()
        if not poll.until(settled, REOPEN_WAIT_SECONDS, POLL_SECONDS):
            raise DeadlineExceeded(
                f"container {c.id}: its monitor did not reopen {log_file} in {REOPEN_WAIT_SECONDS:g}s", c.id
            )
        if not log_file.exists():
            raise FailedPrecondition(
                f"container {c.id}: its monitor exited before it reopened {log_file}", c.id
            )
        log.info("container log reopened", extra={"container_id": c.id, "duration_ms": _ms(start)})

    # --- the containers of a pod (its stop and removal) -----------------------------------------------

    def stop_pod_containers(self, pod_id: str, timeout_s: float) -> None:
        errors = []
        for c in self.records.of_pod(pod_id):
            try:
                self.stop(c.id, timeout_s)
            except Exception as exc:  # stop the others, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    def remove_pod_containers(self, pod_id: str) -> None:
        for c in self.records.of_pod(pod_id):
            self.remove(c.id)
        shm.release(self.run_root, pod_id)


def _ms(start: float) -> float:
    return (time.monotonic() - start) * 1000
