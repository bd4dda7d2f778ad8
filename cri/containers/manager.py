"""runtime.containers: the container lifecycle behind the CRI container RPCs.

Containers run under conmon and outlive the daemon; this object only keeps the records (store + an
in-memory index), drives runc through ``Monitor`` and learns of exits from conmon's exit files. A
per-container lock keeps one container's operations in order; different containers proceed in parallel.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from calyx_base import failpoints, files, poll
from calyx_base.errors import (
    AlreadyExists,
    CommandFailed,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from cri import fields, lifecycle, statedirs
from cri.api import api_pb2 as pb
from cri.containers import arglimits, cdi, cgroups_compat, execsync, orphans, runc_errors, staging
from cri.containers import create as create_mod
from cri.containers.model import CREATED, CREATING, EXITED, KIND, REMOVING, RUNNING, Container
from cri.containers.monitor import ExecResult, Monitor, signal_number, wait_monitor_gone
from cri.containers.procinfo import alive
from cri.containers.resources import to_oci
from cri.containers.spec import TTY_TERM
from cri.runtime import Runtime
from sandbox import mounts, shm
from sandbox.apparmor import AppArmor

log = logging.getLogger("cri.containers")

KILL_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.02
REOPEN_WAIT_SECONDS = 10.0  # conmon answers a log reopen within milliseconds
EXIT_POLL_SECONDS = 0.25
LIVENESS_EVERY = 4  # exit-watcher ticks between checks that each live container's conmon still runs


class ContainerManager:
    def __init__(
        self, runtime: Runtime, cdi_registry: cdi.Registry | None = None, apparmor: AppArmor | None = None
    ) -> None:
        self.runtime = runtime
        # This host's AppArmor: the profiles containers run under (cri/containers/apparmor.py).
        self.apparmor = apparmor or AppArmor()
        # The CDI devices of this node (runtime.cdi_spec_dirs unless the builder hands one over).
        self.cdi = cdi_registry or cdi.Registry(runtime.config.runtime.cdi_spec_dirs)
        self.store = runtime.store
        self.containers_dir = runtime.config.root / "containers"
        self.run_dir = runtime.config.run_root
        self._monitors: dict[str, Monitor] = {}
        self._containers: dict[str, Container] = {}
        self._names: dict[tuple[str, str, int], str] = {}
        self._lock = threading.RLock()
        self._locks: dict[str, threading.RLock] = {}
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- plumbing ---------------------------------------------------------------------------------

    def monitor(self, handler: str) -> Monitor:
        with self._lock:
            if handler not in self._monitors:
                handlers = self.runtime.config.runtime.handlers
                if handler not in handlers:
                    raise InvalidArgument(f"unknown runtime handler {handler!r}")
                conf = handlers[handler]
                root = Path(conf.runtime_root) if conf.runtime_root else self.run_dir / handler
                runtime_path = shutil.which(conf.runtime_path) or conf.runtime_path
                conmon = (
                    shutil.which(self.runtime.config.runtime.conmon_path)
                    or self.runtime.config.runtime.conmon_path
                )
                self._monitors[handler] = Monitor(
                    conmon,
                    runtime_path,
                    root,
                    self.run_dir / "exits",
                    self.run_dir / "sockets",
                    systemd_cgroup=self.runtime.config.cgroup.driver == "systemd",
                )
            return self._monitors[handler]

    def _monitor_of(self, c: Container) -> Monitor:
        return self.monitor(c.handler)

    def persist(self, c: Container) -> None:
        self.store.put(KIND, c.id, c.to_record())
        c.write_beside()

    def index(self, c: Container) -> None:
        with self._lock:
            self._containers[c.id] = c
            self._names[(c.pod_id, c.name, c.attempt)] = c.id

    def _unindex(self, c: Container) -> None:
        with self._lock:
            self._containers.pop(c.id, None)
            if self._names.get((c.pod_id, c.name, c.attempt)) == c.id:
                del self._names[(c.pod_id, c.name, c.attempt)]
            self._locks.pop(c.id, None)

    @contextlib.contextmanager
    def reserve_name(self, pod_id: str, name: str, attempt: int, container_id: str) -> Iterator[None]:
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

    def emit(self, c: Container, event_type: int) -> None:
        """Tell GetContainerEvents subscribers (when the events subsystem exists)."""
        lifecycle.publish_container(self.runtime, c, event_type)

    def _lock_of(self, container_id: str) -> threading.RLock:
        with self._lock:
            return self._locks.setdefault(container_id, threading.RLock())

    # --- lookup -----------------------------------------------------------------------------------

    def get(self, container_id: str) -> Container:
        """A container by id or unique id prefix; NotFound otherwise."""
        if not container_id:
            raise NotFound("container id is empty")
        with self._lock:
            found = self._containers.get(container_id)
            if found is None:
                matches = [c for cid, c in self._containers.items() if cid.startswith(container_id)]
                if len(matches) != 1:
                    raise NotFound(f"container {container_id} not found", container_id)
                found = matches[0]
        self.refresh(found)
        return found

    def _prefixed(self, text: str) -> bool:
        """Whether some container's id starts with ``text``."""
        with self._lock:
            return any(cid.startswith(text) for cid in self._containers)

    def list(self) -> builtins.list[Container]:
        """Every container, from memory. Exits conmon has recorded are picked up first with one listing
        of the exit dir (files there belong to exited containers only, so this stays cheap with many
        running ones); a monitor that died without an exit file is left to the exit watcher."""
        self._pick_up_exits()
        with self._lock:
            return list(self._containers.values())

    def _pick_up_exits(self) -> None:
        try:
            names = os.listdir(self.run_dir / "exits")
        except FileNotFoundError:
            return
        with self._lock:
            pending = [c for n in names if (c := self._containers.get(n)) and c.state in (CREATED, RUNNING)]
        for c in pending:
            self.refresh(c)

    def uses_image(self, image_id: str) -> bool:
        """Whether a container runs ``image_id`` or mounts it as an image volume (RemoveImage asks)."""
        with self._lock:
            return any(
                c.image_id == image_id or any(v.get("image_id") == image_id for v in c.image_volumes)
                for c in self._containers.values()
            )

    # --- state ------------------------------------------------------------------------------------

    def refresh(self, c: Container) -> None:
        """Pick up an exit conmon recorded; mark as exited a container whose monitor vanished."""
        if c.state not in (CREATED, RUNNING):
            return
        mon = self._monitor_of(c)
        code = mon.exit_code(c.id, c.path)
        if code is not None:
            with self._lock_of(c.id):
                if c.state in (CREATED, RUNNING):
                    self._mark_exited(c, code, mon.exited_at_ns(c.id))
            return
        if not alive(c.conmon_pid, c.conmon_start) and not alive(c.pid, c.pid_start):
            with self._lock_of(c.id):
                if c.state in (CREATED, RUNNING) and mon.exit_code(c.id, c.path) is None:
                    c.state = EXITED
                    c.exit_code = 255
                    c.finished_at = time.time_ns()
                    c.reason = "Error"
                    c.message = "the container and its monitor are gone; the exit code is unknown"
                    self.persist(c)
                    self.emit(c, pb.CONTAINER_STOPPED_EVENT)

    def _mark_exited(self, c: Container, code: int, when_ns: int) -> None:
        mon = self._monitor_of(c)
        c.state = EXITED
        c.exit_code = code
        c.finished_at = max(when_ns, c.started_at or c.created_at)
        if mon.oom_killed(c.bundle, c.path):
            c.reason = "OOMKilled"
        elif code == 0:
            c.reason = "Completed"
        else:
            c.reason = "Error"
        self.persist(c)
        log.info("container exited", extra={"container_id": c.id, "exit_code": code, "reason": c.reason})
        self.emit(c, pb.CONTAINER_STOPPED_EVENT)

    # --- lifecycle --------------------------------------------------------------------------------

    def _pod_locked(self, pod_id: str) -> contextlib.AbstractContextManager[None]:
        """The pod's lock (``runtime.pods.locked``), so that a container is not made or started in a
        pod that StopPodSandbox/RemovePodSandbox is tearing down: they hold it while they stop and
        remove the pod's containers. Order: pod lock, then container lock (as stop/remove take them).
        An unknown pod id is left to the caller's lookup (NotFound)."""
        pods = getattr(self.runtime, "pods", None)
        if pods is None or not hasattr(pods, "locked"):
            return contextlib.nullcontext()
        try:
            full_id = pods.resolve_id(pod_id) if hasattr(pods, "resolve_id") else pod_id
        except NotFound:
            return contextlib.nullcontext()
        return pods.locked(full_id)  # type: ignore[no-any-return]

    def create(self, pod_id: str, config: pb.ContainerConfig) -> str:
        with self._pod_locked(pod_id):
            container_id = create_mod.create(self, pod_id, config)
            with self._lock_of(container_id):  # before the exit watcher can report it STOPPED
                self.emit(self._containers[container_id], pb.CONTAINER_CREATED_EVENT)
        return container_id

    def start(self, container_id: str) -> None:
        c = self.get(container_id)
        with self._pod_locked(c.pod_id), self._lock_of(c.id):
            if c.state != CREATED:
                raise FailedPrecondition(f"container {c.id} is {c.state.lower()}, not created", c.id)
            _check_pod_ready(self.runtime, c.pod_id)
            mon = self._monitor_of(c)
            failpoints.hit("container.before_start", container_id=c.id)
            try:
                mon.start(c.id)
                failpoints.hit("container.after_start", container_id=c.id)
            except Exception as exc:
                c.state = EXITED
                c.exit_code = 128
                c.finished_at = time.time_ns()
                c.reason = "StartError"
                c.message = str(exc)[-1000:]
                self.persist(c)
                self.emit(c, pb.CONTAINER_STOPPED_EVENT)
                with contextlib.suppress(Exception):
                    mon.delete(c.id)
                if isinstance(exc, CommandFailed) and runc_errors.stopped_before_start(exc.stderr):
                    raise FailedPrecondition(f"container {c.id} exited before it was started", c.id) from exc
                raise
            c.state = RUNNING
            c.started_at = time.time_ns()
            self.persist(c)
            log.info("container started", extra={"container_id": c.id})
            self.emit(c, pb.CONTAINER_STARTED_EVENT)  # under the lock: STOPPED cannot overtake it
        self.refresh(c)

    def _adopt_started(self, c: Container) -> None:
        """A crash between ``runc start`` and recording it leaves a CREATED record of a running container."""
        state = self._monitor_of(c).state(c.id)
        if state and state.get("status") == "running":
            c.state = RUNNING
            c.started_at = c.started_at or time.time_ns()
            self.persist(c)
            log.info("container found started", extra={"container_id": c.id})

    def _wait_exit(self, c: Container, timeout: float) -> bool:
        mon = self._monitor_of(c)

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
            c = self.get(container_id)
        except NotFound:
            if container_id and not self._prefixed(container_id):
                log.info("stop of an unknown container: nothing to do", extra={"container_id": container_id})
                return
            raise
        if timeout_s > 0 and self._signal_stop(c):
            # The grace period is waited out without the container's lock, so a later stop (kubelet
            # escalating with a shorter timeout), RemoveContainer or StopPodSandbox acts meanwhile
            # instead of queueing behind it, as containerd lets them.
            start = time.monotonic()
            if self._wait_exit(c, timeout_s):
                self.refresh(c)
                log.info("container stopped", extra={"container_id": c.id, "duration_ms": _ms(start)})
                return
        with self._lock_of(c.id):
            self._kill_locked(c)

    def _signal_stop(self, c: Container) -> bool:
        """Send a running container its stop signal (under its lock); whether it was running."""
        with self._lock_of(c.id):
            self.refresh(c)
            if c.state != RUNNING:
                return False
            self._monitor_of(c).kill(c.id, signal_number(c.stop_signal))
            failpoints.hit("container.stop_after_signal", container_id=c.id)
            return True

    def _kill_locked(self, c: Container) -> None:
        """SIGKILL a created or running container and wait for its end (the container's lock held)."""
        self.refresh(c)
        if c.state not in (CREATED, RUNNING):
            return
        mon = self._monitor_of(c)
        start = time.monotonic()
        mon.kill(c.id, 9, all_processes=c.shared_pid_ns)
        if c.state == CREATED:
            # A created container has no conmon-reported exit; runc delete reaps its init.
            self._wait_exit(c, KILL_WAIT_SECONDS)
        elif not self._wait_exit(c, KILL_WAIT_SECONDS):
            raise FailedPrecondition(f"container {c.id} did not exit after SIGKILL", c.id)
        self.refresh(c)
        log.info("container killed", extra={"container_id": c.id, "duration_ms": _ms(start)})

    def remove(self, container_id: str) -> None:
        """Kill if needed, then delete runc state, rootfs, dir and record. Unknown ids are fine."""
        try:
            c = self.get(container_id)
        except NotFound:
            return
        with self._lock_of(c.id):
            if c.state in (CREATED, RUNNING):
                self._kill_locked(c)
            if c.state != REMOVING:
                c.state = REMOVING  # the intent: a crash from here on is finished by recovery
                self.persist(c)
            self._cleanup(c)
        self._unindex(c)
        log.info("container removed", extra={"container_id": c.id})
        self.emit(c, pb.CONTAINER_DELETED_EVENT)

    def _cleanup(self, c: Container) -> None:
        mon = self._monitor_of(c)
        mon.delete(c.id)
        failpoints.hit("container.remove_after_runc_delete", container_id=c.id)
        with contextlib.suppress(OSError):
            cgroups_compat.remove_container(self.runtime, c.id, c.cgroup_parent)
        mounts.unmount(c.rootfs)
        failpoints.hit("container.remove_after_unmount", container_id=c.id)
        wait_monitor_gone(c.id, c.bundle, c.conmon_pid)
        staging.remove_dir(c.path)  # staging mounts of a create cut short are released first
        failpoints.hit("container.remove_after_dir", container_id=c.id)
        mon.forget(c.id)
        self.store.delete(KIND, c.id)

    def update_resources(self, container_id: str, resources: pb.LinuxContainerResources) -> None:
        c = self.get(container_id)
        with self._lock_of(c.id):
            if c.state not in (CREATED, RUNNING):
                raise FailedPrecondition(f"container {c.id} is not running", c.id)
            driver = getattr(self.runtime, "cgroups", None)
            if driver is not None:
                driver.update(c.id, c.cgroup_parent, to_oci(resources, driver.hierarchy))
            else:
                self._monitor_of(c).update(c.id, cgroups_compat.oci_resources(self.runtime, resources))
            c.set_resources(resources)
            self.persist(c)

    def reopen_log(self, container_id: str) -> None:
        c = self.get(container_id)
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

    def discard_dir(self, path: Path) -> None:
        """Remove the dir of a container whose creation failed; if it cannot go now, it is retried
        later (the error being undone is the one the client must see)."""
        self.runtime.cleanups.attempt("container", path.name, lambda: staging.remove_dir(path), "dir")

    # --- exec -------------------------------------------------------------------------------------

    def exec_process(self, c: Container, cmd: builtins.list[str], tty: bool) -> dict[str, Any]:
        """The OCI process of a command run inside ``c``: the container's own process, other args."""
        if not cmd:
            raise InvalidArgument("exec needs a command")
        for arg in cmd:
            fields.no_nul("exec cmd argument", arg)  # execve would cut it short
        spec = json.loads((c.bundle / "config.json").read_text())
        process: dict[str, Any] = dict(spec["process"])
        process["args"] = list(cmd)
        process["terminal"] = tty
        process.pop("oomScoreAdj", None)
        env = list(process.get("env") or [])
        if tty and not any(item.startswith("TERM=") for item in env):
            process["env"] = [*env, f"TERM={TTY_TERM}"]
        arglimits.check(process["args"], list(process.get("env") or []), "the exec's command", c.id)
        return process

    def exec_sync(
        self,
        container_id: str,
        cmd: builtins.list[str],
        timeout_s: int,
        cancel: execsync.Cancel | None = None,
    ) -> ExecResult:
        c = self.get(container_id)
        if c.state != RUNNING:
            raise FailedPrecondition(f"container {c.id} is not running", c.id)
        process = self.exec_process(c, cmd, tty=False)
        # <id>.json + <id>.pid, as a streaming exec leaves them: a daemon that dies meanwhile has the
        # process killed at its next start (cri.streaming.backend reap_orphans).
        spec_file = self._exec_spec_file(c, process)
        pid_file = spec_file.with_suffix(".pid")
        try:
            return self._monitor_of(c).exec_sync(c.id, spec_file, pid_file, cmd, timeout_s, cancel)
        finally:
            pid_file.unlink(missing_ok=True)
            spec_file.unlink(missing_ok=True)

    @staticmethod
    def _exec_spec_file(c: Container, process: dict[str, Any]) -> Path:
        """Write ``process`` where runc exec reads it: ``<container>/exec/<random>.json``."""
        spec_dir = c.path / statedirs.EXEC_DIR
        spec_dir.mkdir(exist_ok=True, mode=statedirs.PRIVATE_DIR)
        spec_file = spec_dir / f"{secrets.token_hex(8)}.json"
        files.replace_text(spec_file, json.dumps(process))  # its env may come from Secrets: 0600
        return spec_file

    def exec_argv(
        self, container_id: str, cmd: builtins.list[str], tty: bool
    ) -> tuple[builtins.list[str], Path]:
        """argv of ``runc exec`` running ``cmd`` in the container, for the streaming server.

        Returns the argv and the process spec file it reads (delete it when done). Run the argv with the
        client's stdio (a pty's slave end as stdin/stdout/stderr when ``tty``); runc relays the
        container's terminal to its own stdio and exits with the command's exit code.
        """
        c = self.get(container_id)
        if c.state != RUNNING:
            raise FailedPrecondition(f"container {c.id} is not running", c.id)
        process = self.exec_process(c, cmd, tty)
        spec_file = self._exec_spec_file(c, process)
        mon = self._monitor_of(c)
        argv = [*mon._runc("exec", "--process", str(spec_file)), c.id]
        return argv, spec_file

    # --- pods ---------------------------------------------------------------------------------------

    def of_pod(self, pod_id: str) -> builtins.list[Container]:
        with self._lock:
            return [c for c in self._containers.values() if c.pod_id == pod_id]

    def stop_pod_containers(self, pod_id: str, timeout_s: float) -> None:
        errors = []
        for c in self.of_pod(pod_id):
            try:
                self.stop(c.id, timeout_s)
            except Exception as exc:  # stop the others, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    def remove_pod_containers(self, pod_id: str) -> None:
        for c in self.of_pod(pod_id):
            self.remove(c.id)
        shm.release(self.run_dir, pod_id)

    # --- subsystem --------------------------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild the index from the store; clean half-made containers; pick up exits made while down.
        A cleanup that fails is logged, counted and retried (``runtime.cleanups``); the rest goes on."""
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        cleanups = self.runtime.cleanups
        records: dict[str, Container] = {}
        for cid, record in self.store.list(KIND).items():
            try:
                records[cid] = Container.from_record(record)
            except (KeyError, TypeError, ValueError) as exc:  # its dir is swept below, from state.json
                log.error(
                    "unreadable container record dropped", extra={"container_id": cid, "error": repr(exc)}
                )
                self.store.delete(KIND, cid)
        for path in self.containers_dir.iterdir():
            if path.name not in records and path.is_dir():
                log.warning("removing a container the store does not know", extra={"container_id": path.name})
                cleanups.attempt("container", path.name, partial(self._remove_unrecorded, path), "unrecorded")
        for cid, c in records.items():
            if c.state in (CREATING, REMOVING):
                log.info("removing half-created or half-removed container", extra={"container_id": cid})
                cleanups.attempt("container", cid, partial(self._finish_removal, c), "remove")
                continue
            self.index(c)
            cleanups.attempt("container", cid, partial(self._release_staging, c), "staging")
            try:
                self.refresh(c)
                if c.state == CREATED:
                    self._adopt_started(c)
            except Exception as exc:  # listed as recorded; the exit watcher looks again
                cleanups.report("container", cid, exc)
            log.info("container recovered", extra={"container_id": cid, "state": c.state})
        cleanups.attempt("cgroup", "orphans", self._sweep_orphan_cgroups)
        for pod_id in self._shm_orphans():
            cleanups.attempt("pod", pod_id, partial(shm.release, self.run_dir, pod_id), "shm")
        self._watcher = threading.Thread(target=self._watch_exits, name="container-exits", daemon=True)
        self._watcher.start()

    def _release_staging(self, c: Container) -> None:
        """Staging mounts never outlive CreateContainer; a crash can leave them (see staging.py)."""
        with self._lock_of(c.id):
            staging.release(c.path)

    def _shm_orphans(self) -> builtins.list[str]:
        """Pods that no longer exist (removed while the daemon was down) but keep their /dev/shm."""
        pods = getattr(self.runtime, "pods", None)
        if pods is None:
            return []
        found = []
        for pod_id in shm.pod_ids(self.run_dir):
            try:
                pods.get(pod_id)
            except Exception:
                log.info("releasing shm of a removed pod", extra={"pod_id": pod_id})
                found.append(pod_id)
        return found

    def _finish_removal(self, c: Container) -> None:
        """Finish a creation or removal a crash interrupted; the record goes once all of it is gone."""
        with self._lock_of(c.id):
            self._cleanup(c)
        with self._lock:
            self._locks.pop(c.id, None)

    def _remove_unrecorded(self, path: Path) -> None:
        """A container dir no record owns (a store that lost its last commits, e.g. at a power cut):
        its container is killed and deleted from runc, rootfs unmounted, cgroups and dir removed,
        using the copy of the record kept beside the container (state.json)."""
        if self.store.get(KIND, path.name) is not None:
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
        self._cleanup(c)

    def _sweep_orphan_cgroups(self) -> None:
        """Container cgroups below our parents that no record owns (see orphans.py); what could not be
        removed is reported by raising, after the others went."""
        known = set(self.store.list(KIND))  # now, not at start: containers made since have records
        pods = getattr(self.runtime, "pods", None)
        with self._lock:
            parents = {""} | {c.cgroup_parent for c in self._containers.values()}
        if pods is not None and hasattr(pods, "list"):
            parents |= {getattr(p, "cgroup_parent", "") or "" for p in pods.list()}
        monitors = [self.monitor(h) for h in self.runtime.config.runtime.handlers]
        failed: dict[str, str] = {}
        removed = orphans.sweep_orphan_cgroups(
            getattr(self.runtime, "cgroups", None),
            known,
            parents,
            self.run_dir / "exits",
            [m.runtime_root for m in monitors],
            failed,
        )
        for cid in removed:  # and runc's state of them, if it kept any
            for mon in monitors:
                if (mon.runtime_root / cid).exists():
                    with contextlib.suppress(Exception):
                        mon.delete(cid)
        if failed:
            raise Internal(f"cgroups of unknown containers not removed: {failed}")

    def _watch_exits(self) -> None:
        """Notice exits soon (for events and status) by watching conmon's exit files appear.

        Polling, not inotify: every EXIT_POLL_SECONDS (0.25 s, so a STOPPED event follows an exit well
        within a second) one listing of the exit dir, which holds files of exited containers only. A
        conmon killed without writing one is caught by the liveness pass every LIVENESS_EVERY ticks
        (1 s): one read of conmon's /proc stat per live container, ~36 us each here, so 500 containers
        cost ~2 % of a core instead of ~7 % when it ran every tick (no inotify watch on the exit dir
        could see a dead conmon).
        """
        tick = 0
        while not self._closing.wait(EXIT_POLL_SECONDS):
            tick += 1
            try:
                self._pick_up_exits()
            except Exception:
                log.exception("exit check failed")
            if tick % LIVENESS_EVERY:
                continue
            with self._lock:
                live = [c for c in self._containers.values() if c.state in (CREATED, RUNNING)]
            for c in live:
                try:
                    if not alive(c.conmon_pid, c.conmon_start):
                        self.refresh(c)
                except Exception:
                    log.exception("exit check failed", extra={"container_id": c.id})

    def close(self) -> None:
        """Stop watching; containers keep running under their monitors. The exec reaper goes."""
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join(5)
        execsync.REAPER.close()


def _check_pod_ready(runtime: Runtime, pod_id: str) -> None:
    """StartContainer needs its pod's namespaces: refuse once the pod is stopped or gone."""
    pods = getattr(runtime, "pods", None)
    if pods is None:
        return
    pod = pods.get(pod_id)  # NotFound once removed
    if not pod.ready:
        raise FailedPrecondition(f"pod {pod_id} is not ready", pod_id)


def _ms(start: float) -> float:
    return (time.monotonic() - start) * 1000


def register(runtime: Runtime) -> None:
    registry = cdi.Registry(runtime.config.runtime.cdi_spec_dirs)
    runtime.register("containers", ContainerManager(runtime, registry, AppArmor()))
